"""Users and bearer tokens. A token is shown once; only its sha256 is stored.

A token reads ``dyart_<43 url-safe characters>`` (256 random bits). Its first
:data:`PREFIX_LENGTH` characters are kept in clear as a name for it, so an
admin can revoke a token by the prefix they were shown, without the secret.
Lookup is by hash (a unique index): no timing side channel on the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import ApiToken, User, as_utc, utcnow

TOKEN_PREFIX = "dyart_"
PREFIX_LENGTH = 12
MIN_REVOKE_PREFIX = 8
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per token per minute


class TokenPrefixError(ValueError):
    """A revoke prefix too short to name a token safely."""


def hash_token(token: str) -> str:
    """The stored form of ``token``: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, is_admin: bool = False) -> User:
    """Add a user (flushed, not committed)."""
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user


def create_token(session: Session, user: User, lasts: timedelta | None = None) -> str:
    """A new token for ``user``, valid for ``lasts`` (None: until revoked); returns the
    plaintext, which is never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = None if lasts is None else utcnow() + lasts
    session.add(
        ApiToken(
            user_id=user.id,
            prefix=token[:PREFIX_LENGTH],
            token_hash=hash_token(token),
            expires_at=expires,
        )
    )
    session.flush()
    return token


def revoke_token(session: Session, prefix: str) -> int:
    """Revoke every active token whose prefix starts with ``prefix``; returns how many.

    Raises:
        TokenPrefixError: ``prefix`` is shorter than MIN_REVOKE_PREFIX characters, or
            starts the tokens of more than one user (a short prefix can: only two of
            its characters after ``dyart_`` are random).
    """
    if len(prefix) < MIN_REVOKE_PREFIX:
        raise TokenPrefixError(
            f"token prefix {prefix!r} is too short: give at least {MIN_REVOKE_PREFIX} characters"
        )
    owners = prefix_owners(session, prefix)
    if len(owners) > 1:
        raise TokenPrefixError(
            f"token prefix {prefix!r} starts active tokens of {len(owners)} users "
            f"({', '.join(owners)}): give all {PREFIX_LENGTH} characters that list-tokens "
            "shows, or --user NAME"
        )
    result = session.execute(
        update(ApiToken)
        .where(_active_with(prefix))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def _active_with(prefix: str) -> Any:
    return ApiToken.prefix.startswith(
        prefix[:PREFIX_LENGTH], autoescape=True
    ) & ApiToken.revoked_at.is_(None)


def prefix_owners(session: Session, prefix: str) -> list[str]:
    """The names of the users with an active token starting with ``prefix``."""
    names = session.scalars(
        select(User.name).join(ApiToken, ApiToken.user_id == User.id).where(_active_with(prefix))
    )
    return sorted(set(names))


def revoke_user_tokens(session: Session, user: User) -> int:
    """Revoke every active token of ``user`` (one lost without its prefix, say)."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)


def user_for_token(session: Session, token: str) -> User | None:
    """The user of an active ``token``, or None (unknown or revoked).

    Records ``last_used_at`` (committed) at most once a minute per token.
    """
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is None or row.revoked_at is not None or is_expired(row):
        return None
    now = utcnow()
    last = as_utc(row.last_used_at)
    if last is None or now - last > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return session.get(User, row.user_id)


def is_expired(row: ApiToken) -> bool:
    expires = as_utc(row.expires_at)
    return expires is not None and expires <= utcnow()


def refusal(session: Session, token: str) -> str:
    """Why ``token`` opens nothing: expired (and when), or unknown or revoked."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is not None and row.revoked_at is None and is_expired(row):
        when = as_utc(row.expires_at)
        assert when is not None
        return (
            f"token expired on {when:%Y-%m-%d %H:%M} UTC: ask an admin for a new one "
            "(dyart-service admin create-token)"
        )
    return "invalid or revoked token"


authenticate = user_for_token
