"""``dyart-service``: serve the API (with one worker), migrate, and administer users.

    dyart-service serve [--host H] [--port P] [--no-worker] [--demo]
    dyart-service migrate
    dyart-service workers                        (which workers are there, on which queue)
    dyart-service admin create-user NAME [--admin]
    dyart-service admin create-token NAME [--days N]   (prints the token once)
    dyart-service admin revoke-token PREFIX | --user NAME
    dyart-service admin set-admin NAME yes|no    (an admin sees every user's jobs)
    dyart-service admin list-users
    dyart-service admin list-tokens NAME

Settings come from DYART_* environment variables (db.settings.Settings). A failure
is one line on stderr naming what to change: exit 2 for invalid settings, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from db.settings import (
    ENV_PREFIX,
    WORKER_RESTART_EXIT,
    Settings,
    get_settings,
    settings_error_lines,
)

ROOT = Path(__file__).resolve().parents[1]


class CliError(Exception):
    """A command that cannot do what was asked; the message says why."""


def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest Alembic revision."""
    from db.session import upgrade_database

    Path(settings.home).mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)


def worker_environment(settings: Settings) -> dict[str, str]:
    """The worker child's environment: ours, with every setting as the API resolved it.

    The child gets each ``DYART_*`` value spelled out (home, URLs and folders made
    absolute), so a relative ``DYART_HOME`` or a ``.env`` file cannot make it read
    another database than the API's.
    """
    names = {f"{ENV_PREFIX}{name.upper()}": value for name, value in settings}
    resolved = {key: str(value) for key, value in names.items() if value is not None}
    inherited = {k: v for k, v in os.environ.items() if k not in names}  # unset stays unset
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**inherited, **resolved, "PYTHONPATH": path}


def start_worker(settings: Settings) -> subprocess.Popen:
    """One real Celery worker process beside the API (the embedded mode).

    It runs in our working directory (PYTHONPATH finds this checkout's packages).
    """
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
    command += ["--loglevel", "INFO", "--concurrency", "1", "--pool", "solo"]
    command += ["--without-gossip", "--without-mingle", "--hostname", "embedded@%h"]
    env = worker_environment(settings)
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent())


class WorkerWatch:
    """Stops the server when its worker exits on its own: a server whose worker died
    would accept jobs that stay queued for ever. ``exit_code`` says it happened.

    A worker that exits with ``WORKER_RESTART_EXIT`` (a job's training stalled and
    the process could not free itself) is started again with ``restart()``.
    """

    def __init__(
        self,
        worker: subprocess.Popen,
        server: Any,
        restart: Callable[[], subprocess.Popen] | None = None,
    ):
        self.worker, self.server, self.restart = worker, server, restart
        self.exit_code: int | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            code = self.worker.wait()
            # should_exit: the server was told to stop (Ctrl-C reaches the worker too)
            if self.stopping or self.server.should_exit:
                return
            if code == WORKER_RESTART_EXIT and self.restart is not None:
                print(
                    "the worker exited to be restarted (a job's training stalled: its log "
                    "says where); starting it again",
                    flush=True,
                )
                self.worker = self.restart()
                continue
            self.exit_code = code
            self.server.should_exit = True
            return


def _die_with_parent() -> Callable[[], None] | None:
    """What the worker child runs before exec: ask Linux for SIGTERM when the server dies.

    Without it a server killed hard (SIGKILL, or a closed terminal's SIGHUP) leaves
    its worker running on, and the next ``serve`` starts a second one beside it.
    Prepared here, in the parent: the child between fork and exec imports nothing.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, pr_set_pdeathsig, sigterm = ctypes.CDLL(None).prctl, 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


def stop_worker(worker: subprocess.Popen, grace: float = 20.0) -> None:
    """Ask the worker to stop (warm shutdown), then kill it if it lingers."""
    if worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def serve(settings: Settings, with_worker: bool, demo: bool = False) -> None:
    """Migrate, start the worker, run uvicorn; stop the worker when uvicorn ends, and
    stop uvicorn (exit 1) when the worker ends on its own.

    With ``demo``, also submit the demo job (once per database) and print its
    progress and, at its end, where its checkpoint and results are.
    """
    import uvicorn

    from api.auth import auth_required
    from api.main import create_app

    migrate(settings)
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    auth = "ON (bearer tokens)" if auth_required(settings) else "OFF (loopback only)"
    print(f"DyART service on {url}  (API docs {url}/docs)  auth: {auth}", flush=True)
    worker = start_worker(settings) if with_worker else None
    if demo and auth_required(settings):
        print("demo: skipped, this server requires tokens (submit the recipe with one)")
    elif demo:
        from api import demo as demo_job

        demo_job.start(f"http://127.0.0.1:{settings.port}", Path(settings.artifacts_dir))
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")
    )
    watch = (
        WorkerWatch(worker, server, lambda: start_worker(settings)) if worker is not None else None
    )
    # uvicorn shuts down on SIGTERM and then raises the signal again; by default that
    # would end this process before the ``finally`` stopped the worker
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        server.run()
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if worker is not None and watch is not None:
            watch.stopping = True
            stop_worker(watch.worker)
    if watch is not None and watch.exit_code is not None:
        raise CliError(
            f"the worker process exited (code {watch.exit_code}), so the server stopped "
            "too: queued jobs would wait for ever; its output above says why"
        )


class _Terminated(Exception):
    """SIGTERM, re-raised by uvicorn once it has shut down: stop the worker, then exit."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _database(settings: Settings) -> str:
    """The database URL as we may print it (no password)."""
    return make_url(settings.database_url).render_as_string(hide_password=True)


def require_schema(settings: Settings) -> None:
    """Refuse a database that does not exist or lacks this version's schema, with the cure.

    Checked before connecting: SQLite would otherwise create an empty file.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from db.session import alembic_config, engine_for_url

    url = make_url(settings.database_url)
    path = url.database if url.get_backend_name() == "sqlite" else None
    if path and path != ":memory:" and not Path(path).is_file():
        raise CliError(
            f"there is no database at {path} (DYART_HOME / DYART_DATABASE_URL): "
            "create it with: dyart-service migrate"
        )
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    engine = engine_for_url(settings.database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise CliError(
            f"the database {_database(settings)} has schema revision {current or 'none'}, "
            f"this version needs {head}: run dyart-service migrate"
        )


def _session(settings: Settings) -> Any:
    from db.session import make_engine, make_session_factory

    require_schema(settings)
    return make_session_factory(make_engine(settings))()


def _user(session: Any, name: str) -> Any:
    from db.models import User

    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise CliError(
            f"no user named {name!r}; create it with: dyart-service admin create-user {name}"
        )
    return user


def create_user(settings: Settings, name: str, is_admin: bool) -> None:
    from db import tokens
    from db.models import User

    with _session(settings) as session:
        if session.scalars(select(User).where(User.name == name)).first() is not None:
            raise CliError(f"user {name!r} already exists")
        tokens.create_user(session, name, is_admin=is_admin)
        session.commit()
    print(f"created user {name}{' (admin)' if is_admin else ''}")


def create_token(settings: Settings, name: str, days: float | None = None) -> None:
    from datetime import timedelta

    from db import tokens

    if days is not None and not (0 < days <= 36500):
        raise CliError(f"--days: expected a number of days above 0 (at most 36500), got {days:g}")
    with _session(settings) as session:
        lasts = None if days is None else timedelta(days=days)
        token = tokens.create_token(session, _user(session, name), lasts)
        session.commit()
    print(token)


def revoke_token(settings: Settings, prefix: str | None, user: str | None) -> None:
    from db import tokens

    if (prefix is None) == (user is None):
        raise CliError("give a token prefix or --user NAME (one of the two)")
    with _session(settings) as session:
        if user is not None:
            count = tokens.revoke_user_tokens(session, _user(session, user))
            session.commit()
            print(f"revoked {count} active token(s) of {user}")
            return
        assert prefix is not None
        try:
            owners = tokens.prefix_owners(session, prefix)
            count = tokens.revoke_token(session, prefix)
        except tokens.TokenPrefixError as exc:
            raise CliError(str(exc)) from exc
        session.commit()
    if not count:
        raise CliError(f"no active token starts with {prefix!r}")
    print(f"revoked {count} token(s) of {', '.join(owners)} starting with {prefix}")


def set_admin(settings: Settings, name: str, admin: bool) -> None:
    """Give a user admin rights (every user's jobs) or take them away; it holds from the
    user's next request, open event streams included."""
    with _session(settings) as session:
        user = _user(session, name)
        was, user.is_admin = bool(user.is_admin), admin
        session.commit()
    role = "an admin (sees every user's jobs)" if admin else "a user (sees only their own jobs)"
    print(f"{name} {'was already' if was == admin else 'is now'} {role}")


def list_tokens(settings: Settings, name: str) -> None:
    """A user's tokens: prefix, state, created, last used (the tokens themselves are
    not stored, only their hashes)."""
    from db import tokens
    from db.models import ApiToken

    def when(moment: Any) -> str:
        return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"

    with _session(settings) as session:
        user = _user(session, name)
        rows = session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
        ).all()
        print("prefix\tstate\tcreated\tlast used")
        for token in rows:
            if token.revoked_at is not None:
                state = f"revoked {when(token.revoked_at)}"
            elif tokens.is_expired(token):
                state = f"expired {when(token.expires_at)}"
            elif token.expires_at is not None:
                state = f"active until {when(token.expires_at)}"
            else:
                state = "active"
            print(f"{token.prefix}\t{state}\t{when(token.created_at)}\t{when(token.last_used_at)}")


def list_users(settings: Settings) -> None:
    from db.models import User

    with _session(settings) as session:
        for user in session.scalars(select(User).order_by(User.name)):
            print(f"{user.name}\t{'admin' if user.is_admin else 'user'}\t{user.id}")


def list_workers(settings: Settings) -> None:
    """The workers' rows of presence: which are there to take a job, on which queue."""
    from db import workers
    from db.models import utcnow

    with _session(settings) as session:
        rows, now = workers.every(session), utcnow()
        present = [row for row in rows if workers.is_present(row, now)]
        here = sum(row.queue == settings.worker_queue for row in present)
        print(f"{here} worker(s) present on queue {settings.worker_queue!r} (DYART_WORKER_QUEUE)")
        if not rows:
            return
        print("worker\tqueue\tdevice\tstarted\tlast seen\tstate")
        for row in rows:
            state = "present" if row in present else "gone (missed 3 beats)"
            started = row.started_at.strftime("%Y-%m-%d %H:%M")
            seen = (now - row.last_seen_at).total_seconds()
            print(f"{row.id}\t{row.queue}\t{row.device}\t{started}\t{seen:.0f}s ago\t{state}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dyart-service", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve_p = verbs.add_parser("serve", help="migrate, start one worker and the API")
    serve_p.add_argument("--host", help="listen address (default DYART_HOST)")
    serve_p.add_argument("--port", type=int, help="port (default DYART_PORT)")
    serve_p.add_argument("--no-worker", action="store_true", help="run the API only")
    serve_p.add_argument(
        "--demo", action="store_true", help="submit the mnist10k DyART demo (once) and follow it"
    )
    verbs.add_parser("migrate", help="upgrade the database schema to the newest revision")
    verbs.add_parser("workers", help="list the workers seen on this database, and which are there")
    admin = verbs.add_parser("admin", help="users and tokens").add_subparsers(
        dest="action", required=True
    )
    user_p = admin.add_parser("create-user", help="add a user")
    user_p.add_argument("name")
    user_p.add_argument("--admin", action="store_true", help="may see every job")
    token_p = admin.add_parser("create-token", help="print a new token for a user (once)")
    token_p.add_argument("name")
    token_p.add_argument(
        "--days", type=float, help="the token expires after this many days (default: never)"
    )
    revoke_p = admin.add_parser(
        "revoke-token", help="revoke tokens by prefix (see list-tokens), or all of a user's"
    )
    revoke_p.add_argument("prefix", nargs="?", help="the token's first characters")
    revoke_p.add_argument("--user", help="revoke every active token of this user")
    set_p = admin.add_parser(
        "set-admin", help="give a user admin rights (every user's jobs) or take them away"
    )
    set_p.add_argument("name")
    set_p.add_argument("admin", choices=("yes", "no"), help="yes: admin; no: a plain user")
    admin.add_parser("list-users", help="list users")
    admin.add_parser(
        "list-tokens", help="a user's tokens: prefix, state, created, last used"
    ).add_argument("name")
    return parser


def run(args: argparse.Namespace, settings: Settings) -> None:
    if args.verb == "serve":
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        # validated again, as if set by DYART_HOST/DYART_PORT: --host 0.0.0.0 with
        # DYART_AUTH=off is refused like DYART_HOST=0.0.0.0 is (model_copy checks nothing)
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
        serve(settings, not args.no_worker, args.demo)
    elif args.verb == "migrate":
        migrate(settings)
        print("database schema is up to date")
    elif args.verb == "workers":
        list_workers(settings)
    elif args.action == "create-user":
        create_user(settings, args.name, args.admin)
    elif args.action == "create-token":
        create_token(settings, args.name, args.days)
    elif args.action == "revoke-token":
        revoke_token(settings, args.prefix, args.user)
    elif args.action == "list-tokens":
        list_tokens(settings, args.name)
    elif args.action == "set-admin":
        set_admin(settings, args.name, args.admin == "yes")
    else:
        list_users(settings)


def main(argv: list[str] | None = None) -> int:
    """Run a command; a failure is one line on stderr (exit 2: settings, 1: the rest)."""
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = get_settings()
        run(args, settings)
    except ValidationError as exc:
        for line in settings_error_lines(exc):
            print(f"dyart-service: {line}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"dyart-service: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, InterfaceError) as exc:  # unreachable, refused, locked...
        assert settings is not None  # only commands with settings touch the database
        reason = str(exc.orig or exc).strip().splitlines()[0]
        print(
            f"dyart-service: cannot use the database {_database(settings)} "
            f"(DYART_DATABASE_URL): {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
