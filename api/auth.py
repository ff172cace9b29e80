"""Bearer-token authentication (tokens are stored hashed, see db.tokens).

With ``auth = "auto"`` a token is required unless the server listens on a
loopback address; ``"required"`` always asks for one, ``"off"`` never does
(and is refused off loopback by the settings). Without auth, a request that
carries no token acts as the built-in admin user ``local``; a token that is
sent is still checked, so a bad one is a 401 in every mode.

The settings name the address the server should listen on, not the one it does
(``uvicorn api.main:app --host 0.0.0.0`` ignores DYART_HOST), so without auth
each request is also checked against the address it arrived on (see
:func:`arrived_beyond_loopback`) and for the headers a reverse proxy adds: behind
nginx on the same host every request arrives on loopback.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import AuthMissingError, AuthOffExposedError
from db import tokens
from db.models import User
from db.settings import is_loopback

LOCAL_USER = "local"


def auth_required(settings: object) -> bool:
    """Resolve the ``auth`` setting: "auto" means required unless bound to loopback."""
    mode = str(getattr(settings, "auth", "auto")).lower()
    if mode in ("off", "false", "none", "disabled"):
        return False
    if mode == "auto":
        return not is_loopback(str(getattr(settings, "host", "127.0.0.1")))
    return True


def arrived_beyond_loopback(server: Any) -> str | None:
    """The address a request arrived on if it is a network address beyond loopback.

    ``server`` is the ASGI scope's ``(host, port)`` of the socket the request came
    in on; uvicorn and other servers give the socket's numeric address. Only a host
    that parses as an IP address can be refused: a Unix socket (a path) and an
    in-process client (TestClient's "testserver") are not on any network. An
    IPv4-mapped IPv6 address (a dual-stack socket) counts as its IPv4 address.
    """
    if not isinstance(server, (tuple, list)) or not server:
        return None
    host = str(server[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return None if (mapped or address).is_loopback else host


# Headers a reverse proxy adds: a request that carries one came from wherever the
# proxy listens, though it arrives on loopback.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def came_through_proxy(headers: Any) -> str | None:
    """The first proxy header ``headers`` carries (as it is named there), or None."""
    for name in PROXY_HEADERS:
        if headers.get(name) is not None:
            return name
    return None


def refuse_no_auth_beyond_loopback(server: Any, settings: object, headers: Any = None) -> None:
    """AuthOffExposedError (403) for a request without auth that arrived off loopback,
    or on loopback through a reverse proxy (nginx in front of 127.0.0.1:8000, say)."""
    host = arrived_beyond_loopback(server)
    proxy = came_through_proxy(headers) if headers is not None and host is None else None
    if host is None and proxy is None:
        return
    mode = str(getattr(settings, "auth", "auto"))
    bound = getattr(settings, "host", "127.0.0.1")
    where = (
        f"arrived on {host}, an address beyond loopback, so anyone who can reach it"
        if host is not None
        else f"came through a proxy (it carries {proxy}), so anyone who can reach the proxy"
    )
    raise AuthOffExposedError(
        f"authentication is off (DYART_AUTH={mode}, DYART_HOST={bound}) but this request "
        f"{where} would act as the admin: set DYART_AUTH=required and send bearer tokens, "
        "or serve on 127.0.0.1 only, without a proxy"
    )


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; 401 if malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthMissingError("malformed Authorization header: expected 'Bearer <token>'")
    return token


def local_user(session: Session) -> User:
    """The built-in admin of the no-auth embedded mode, made on first use."""
    user = session.scalars(select(User).where(User.name == LOCAL_USER)).first()
    if user is None:
        try:
            user = User(name=LOCAL_USER, is_admin=True)
            session.add(user)
            session.commit()
        except IntegrityError:  # another request made it first
            session.rollback()
            user = session.scalars(select(User).where(User.name == LOCAL_USER)).one()
    return user


def authenticate(session: Session, header: str | None, required: bool) -> User:
    """The user a request acts as, or AuthMissingError (401) saying what was wrong."""
    token = bearer_token(header)
    if token is None:
        if required:
            raise AuthMissingError("missing bearer token: send 'Authorization: Bearer <token>'")
        return local_user(session)
    user = tokens.user_for_token(session, token)
    if user is None:
        raise AuthMissingError(tokens.refusal(session, token))
    return user
