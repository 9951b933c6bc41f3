"""Gymnasium environments (WebShop, ALFWorld) and the agent protocol. No training code is imported here."""
