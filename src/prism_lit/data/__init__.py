"""Trajectory data: schema, format readers, tokenisation with assistant-only masks, DataModule.

Import the DataModule from ``prism_lit.data.datamodule`` (this package stays light for env code).
"""
