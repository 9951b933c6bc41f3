"""Trajectory data: schema, format readers, tokenisation with assistant-only masks, DataModule."""
