"""Service settings: one pydantic-settings class, read from ``DYART_*`` variables
(and from a ``.env`` file in the working directory, for those the environment lacks).

The defaults give the embedded mode (DESIGN.md §2): SQLite for the database,
kombu's SQLAlchemy transport on SQLite as the broker, artifacts in a local
folder, everything under ``home``. Production sets the URLs to Postgres and
Redis; nothing else in the code knows which mode it is in.

Unsafe combinations are refused at start, naming the variable: a stale-job
timeout that a healthy worker's heartbeat could miss, or authentication off
on an address other than loopback.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

ENV_PREFIX = "DYART_"
URL_EXAMPLES = {
    "database_url": "sqlite:////abs/path/dyart.db or postgresql+psycopg://user:pass@host/db",
    "broker_url": "redis://host:6379/0 or sqla+sqlite:////abs/path/broker.db",
    "result_backend": "redis://host:6379/1 or db+sqlite:////abs/path/results.db",
}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The exit status of a worker process that asks its supervisor to start it again
# (a job's training stalled: worker.runner.StallWatchdog); `dyart-service serve` does.
WORKER_RESTART_EXIT = 75


class Settings(BaseSettings):
    """Every setting of the service; each field is one ``DYART_<NAME>`` variable."""

    # A .env file in the working directory fills in what the environment does not set.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(
        Path("var"),
        description="Folder for the embedded mode's database, broker, artifacts and data.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the database (default `sqlite:///{home}/dyart.db`; "
        "production: `postgresql+psycopg://user:pass@host/db`).",
    )
    broker_url: str = Field(
        "",
        description="Celery broker URL (default `sqla+sqlite:///{home}/broker.db`, a broker "
        "that needs no server; production: `redis://host:6379/0`).",
    )
    result_backend: str = Field(
        "",
        description="Celery result backend (default `db+sqlite:///{home}/results.db`). Tasks "
        "return small dicts; the database, not this backend, holds job state.",
    )
    artifacts_dir: Path = Field(
        Path(""), description="Folder of checkpoints and model cards (default `{home}/artifacts`)."
    )
    data_dir: Path = Field(
        Path(""), description="Folder of local datasets, e.g. CIFAR-10 (default `{home}/data`)."
    )
    device: str = Field(
        "auto", description="Torch device of the worker: `auto` (CUDA if present), `cuda`, `cpu`."
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="Seconds between a running job's heartbeats (and lease renewals)."
    )
    stale_after_seconds: float = Field(
        60.0,
        gt=0,
        description="A running job whose heartbeat is older than this is requeued (its worker "
        "died); must exceed 2 x heartbeat_seconds.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts (worker deaths included) before a job fails for good."
    )
    stall_seconds: float = Field(
        1800.0,
        ge=0,
        description="A training job whose steps stop for this long, or for 4 times its "
        "longest gap between steps if that is longer (a hung GPU or data loader), makes its "
        "worker process exit so that it is restarted; the job is requeued "
        "(an attempt counted) and resumes from its latest checkpoint. Not while AutoAttack "
        "runs; 0: never.",
    )
    max_active_per_user: int = Field(
        0,
        ge=0,
        description="Jobs and requested evaluations one user may have queued or running at "
        "once; past it a submission, resume or evaluation request answers 429. Admins are "
        "not limited; 0: no limit.",
    )
    sweep_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds between the worker's sweeps for stale jobs and unsent queued jobs.",
    )
    resend_after_seconds: float = Field(
        300.0,
        gt=0,
        description="A job still queued this long after its task was sent is sent again "
        "(a broker that lost or never got the message); each further re-send waits twice "
        "as long, up to 8 times this.",
    )
    worker_queue: str = Field("celery", description="Celery queue the worker consumes.")
    worker_alive_file: Path = Field(
        Path(""),
        description="File a worker touches every `sweep_seconds` while it runs, training or "
        "not; `python -m worker.alive` checks its age (default `{home}/worker.alive`).",
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="Bearer-token auth: `auto` = required unless `host` is loopback; "
        "`off` is refused off loopback.",
    )
    metrics_token: str | None = Field(
        None,
        repr=False,
        description="Token Prometheus sends to read `/metrics` (`Authorization: Bearer <token>`), "
        "a secret of its own. With tokens required, `/metrics` answers it or an admin's API "
        "token (unset: an admin's only); in the embedded mode on loopback, unset leaves "
        "`/metrics` open.",
    )
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")

    @field_validator(*URL_EXAMPLES)
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        name = str(info.field_name)
        try:
            url = make_url(value)
            if name == "database_url":
                url.get_dialect()  # the dialect module only: no connection, no driver import
        except NoSuchModuleError:  # a subclass of ArgumentError: first
            raise ValueError(
                f"no SQLAlchemy database is called {url.drivername!r}; "
                f"expected e.g. {URL_EXAMPLES[name]}"
            ) from None
        except ArgumentError:
            raise ValueError(f"not a URL; expected e.g. {URL_EXAMPLES[name]}") from None
        return value

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: str | None) -> str | None:
        # An empty value is refused, not taken as unset: `DYART_METRICS_TOKEN=${VAR}` with
        # VAR missing would otherwise open /metrics to everyone without a word.
        if value is None:
            return value
        if not value:
            raise ValueError(
                "DYART_METRICS_TOKEN is empty: set it to a token (e.g. `openssl rand -hex 32`), "
                "or leave it unset to serve /metrics without one"
            )
        if not all("!" <= char <= "~" for char in value):
            raise ValueError(
                "DYART_METRICS_TOKEN must be visible ASCII characters without spaces, "
                "as it is sent in an `Authorization: Bearer <token>` header"
            )
        return value

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        defaults = {
            "database_url": f"sqlite:///{home}/dyart.db",
            "broker_url": f"sqla+sqlite:///{home}/broker.db",
            "result_backend": f"db+sqlite:///{home}/results.db",
        }
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        paths = {
            "artifacts_dir": home / "artifacts",
            "data_dir": home / "data",
            "worker_alive_file": home / "worker.alive",
        }
        for name, default in paths.items():
            value = getattr(self, name)
            path = default if str(value) in ("", ".") else value
            object.__setattr__(self, name, Path(path).expanduser().resolve())
        self._check_safety()
        return self

    def _check_safety(self) -> None:
        if self.stale_after_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"DYART_STALE_AFTER_SECONDS ({self.stale_after_seconds:g}) must be more than "
                f"twice DYART_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), or a live "
                "worker's job could be taken from it"
            )
        if self.auth == "off" and not is_loopback(self.host):
            raise ValueError(
                f"DYART_AUTH=off is only allowed on a loopback host, not {self.host!r}: "
                "anyone on the network could use the service"
            )

    @property
    def lease_seconds(self) -> float:
        """How long a worker's claim on a job lasts without renewal."""
        return self.stale_after_seconds


SECRET_FIELDS = frozenset({*URL_EXAMPLES, "metrics_token"})  # a password or token: never echoed


def settings_error_lines(error: ValidationError) -> list[str]:
    """One line per invalid setting, naming its ``DYART_*`` variable (not the field)
    and what was expected: what the CLI and the worker print instead of a traceback."""
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:  # a check across settings: its message names the variables
            lines.append(message)
            continue
        field = str(item["loc"][0])
        value = "" if field in SECRET_FIELDS else f"={item['input']!r}"
        if message[1:2].islower():  # "Input should be" -> "input should be"
            message = message[:1].lower() + message[1:]
        lines.append(f"{ENV_PREFIX}{field.upper()}{value} is not valid: {message}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment's settings, read once (``get_settings.cache_clear()`` re-reads)."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests that change ``DYART_*`` variables)."""
    get_settings.cache_clear()


FROM_HOME = (
    "database_url",
    "broker_url",
    "result_backend",
    "artifacts_dir",
    "data_dir",
    "worker_alive_file",
)


def _default_text(name: str, field: Any) -> str:
    default = field.default
    if name in FROM_HOME:
        return "(from `home`)"
    if default is None:
        return "(unset)"
    return f"`{default}`"


def settings_table_markdown() -> str:
    """The README's settings table: variable, default, meaning."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_default_text(name, field)} | {description} |"
        )
    return "\n".join(lines)
