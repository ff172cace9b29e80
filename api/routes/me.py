"""Who the caller is."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser
from api.routes import API_PREFIX, AUTHED_ERRORS
from api.schemas import UserPublic

router = APIRouter(prefix=API_PREFIX, tags=["users"], responses=AUTHED_ERRORS)


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    """The user this request acts as ("local" when auth is off)."""
    return UserPublic(id=str(user.id), name=user.name, is_admin=bool(user.is_admin))
