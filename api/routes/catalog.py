"""The catalog: datasets (and whether this server has their files), models, methods."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.routes import API_PREFIX
from dyart import catalog

router = APIRouter(prefix=API_PREFIX, tags=["catalog"])


@router.get("/catalog")
def get_catalog(request: Request) -> dict[str, Any]:
    """Datasets (with "available" on this server), architectures, methods, settings."""
    out = catalog.public_catalog(request.app.state.settings.data_dir)
    out["eval_presets"] = list(catalog.EVAL_PRESETS)
    return out
