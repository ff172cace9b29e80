"""The DyART training service's HTTP API (FastAPI). Never imports torch."""

__version__ = "0.1.0"
