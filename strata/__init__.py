"""Strata shared core: wire types, codec, model and data helpers; imports no service."""

__version__ = "0.1.0"
