"""Outpost: keep services at a remote site up to date over a slow, lossy, intermittent link."""

__version__ = "0.1.0"
