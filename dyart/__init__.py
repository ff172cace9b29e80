"""DyART: Dynamics-Aware Robust Training (Xu et al., ICLR 2023) in plain PyTorch.

Importing this package does not import torch, so ``dyart.catalog`` stays light
for the API process. ``dyart.load_model`` imports torch when first called.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def load_model(path: Any, **kwargs: Any) -> Any:
    """Rebuild a model from a safetensors file and its JSON model card (no pickle)."""
    from dyart.checkpoint import load_model as _load

    return _load(path, **kwargs)
