"""Training methods: one object per method, ``loss, metrics = method(model, x, y)``.

``get_method(name, dataset=..., **hparams)`` builds one with the catalog's defaults.
"""

from dyart.methods import clean, dyart, mart, pgd_at, trades  # noqa: F401 (registers)
from dyart.methods.base import METHOD_CLASSES, Method, get_method
from dyart.methods.boundary import BoundaryResult, find_boundary, soft_margin

__all__ = [
    "METHOD_CLASSES",
    "BoundaryResult",
    "Method",
    "find_boundary",
    "get_method",
    "soft_margin",
]
