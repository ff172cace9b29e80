"""The catalog: datasets (and whether this server has their files), models, methods."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.routes import API_PREFIX
from dyart import catalog

router = APIRouter(prefix=API_PREFIX, tags=["catalog"])

# Test-set sizes: a standard-preset evaluation on all of them is leaderboard-grade.
FULL_TEST_SIZE = {
    "mnist10k": 2000,
    "digits": 360,
    "cifar10": 10000,
    "cifar100": 10000,
    "svhn": 26032,
    "tiny_imagenet": 10000,
}


@router.get("/catalog")
def get_catalog(request: Request) -> dict[str, Any]:
    """Datasets (with "available" on this server), architectures, methods, settings."""
    out = catalog.public_catalog(request.app.state.settings.data_dir)
    for dataset in out["datasets"]:
        dataset["test_size"] = FULL_TEST_SIZE.get(dataset["name"])
    out["eval_presets"] = list(catalog.EVAL_PRESETS)
    return out
