"""``dyart-service`` with bad settings or a database it cannot use: one line on stderr
that names the DYART_* variable (or the command that cures it), no traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

UNREACHABLE = "postgresql+psycopg://dyart:hunter2@127.0.0.1:1/dyart"


def dyart_service(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, in ``cwd``, with only the given DYART_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DYART_")}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "api.cli", *args]
    env = {**clean, "PYTHONPATH": path, "DYART_HOME": str(cwd / "home"), **env}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dyart-service: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DYART_AUTH": "bogus"}, "DYART_AUTH='bogus' is not valid: input should be 'auto', "),
        ({"DYART_HEARTBEAT_SECONDS": "-1"}, "DYART_HEARTBEAT_SECONDS='-1' is not valid: input "),
        ({"DYART_PORT": "abc"}, "DYART_PORT='abc' is not valid: input should be a valid integer"),
        ({"DYART_DATABASE_URL": "notaurl"}, "DYART_DATABASE_URL is not valid: not a URL; expected"),
        ({"DYART_DATABASE_URL": "postgres://u:hunter2@h/d"}, "no SQLAlchemy database is called"),
        ({"DYART_BROKER_URL": "localhost"}, "DYART_BROKER_URL is not valid: not a URL"),
        ({"DYART_RESULT_BACKEND": "6379"}, "DYART_RESULT_BACKEND is not valid: not a URL"),
        ({"DYART_STALE_AFTER_SECONDS": "3"}, "DYART_STALE_AFTER_SECONDS (3) must be more than"),
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["admin", "create-user", "alice"]])
def test_a_bad_setting_is_one_line_naming_its_variable(tmp_path, env, expected, command):
    result = dyart_service(tmp_path, *command, **env)

    assert expected in one_line_error(result)
    assert result.returncode == 2 and "hunter2" not in result.stderr
    assert not (tmp_path / "home").exists()  # refused before anything was made


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["admin", "list-users"]])
def test_an_unreachable_database_is_one_line(tmp_path, command):
    result = dyart_service(tmp_path, *command, DYART_DATABASE_URL=UNREACHABLE)

    line = one_line_error(result)
    assert "cannot use the database postgresql+psycopg://dyart:***@127.0.0.1:1/dyart" in line
    assert "(DYART_DATABASE_URL): connection failed" in line and "hunter2" not in line


def test_admin_on_a_fresh_home_says_to_migrate(tmp_path):
    result = dyart_service(tmp_path, "admin", "create-user", "alice")

    line = one_line_error(result)
    assert f"there is no database at {tmp_path}/home/dyart.db" in line
    assert line.endswith("create it with: dyart-service migrate")
    assert not (tmp_path / "home").exists()  # not an empty database file either


def test_admin_on_a_database_without_the_schema_says_to_migrate(tmp_path):
    (tmp_path / "home").mkdir()
    with closing(sqlite3.connect(tmp_path / "home" / "dyart.db")) as conn:
        conn.execute("CREATE TABLE unrelated (id INTEGER)")

    line = one_line_error(dyart_service(tmp_path, "admin", "create-user", "alice"))

    assert "has schema revision none, this version needs " in line
    assert line.endswith("run dyart-service migrate")


def test_admin_works_once_migrated(tmp_path):
    assert dyart_service(tmp_path, "migrate").returncode == 0
    result = dyart_service(tmp_path, "admin", "create-user", "alice")
    assert result.returncode == 0 and result.stdout == "created user alice\n", result.stderr


def test_serve_host_option_is_checked_like_the_variable(tmp_path):
    # --host overrides DYART_HOST; auth off beyond loopback is refused either way
    port = str(free_port())
    result = dyart_service(tmp_path, "serve", "--host", "0.0.0.0", "--port", port, DYART_AUTH="off")

    line = one_line_error(result)
    assert "DYART_AUTH=off is only allowed on a loopback host, not '0.0.0.0'" in line
    assert not (tmp_path / "home").exists()  # nothing started, nothing migrated
