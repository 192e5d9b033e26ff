"""SUPIR image restoration and upscaling engine (independent of any host UI)."""

__version__ = "0.1.0"
