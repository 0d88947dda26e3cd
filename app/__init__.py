"""Roost, the desktop launcher for RWKV models."""

__version__ = "0.1.0"
