"""Fuzz every operation of the API's OpenAPI schema with schemathesis.

Starts the API on loopback in a fresh temporary home (SQLite database, the
serverless SQLite broker, no worker: created jobs just queue), with auth
required and a token of a fresh user; runs ``schemathesis run`` against
``/openapi.json`` with that token; then reports, per operation, the failures
schemathesis found (server errors, responses that violate the schema,
undocumented status codes...) and counts the 500s the server itself logged.
Exit status 0 only when there were neither failures nor logged 500s.

    .venv/bin/python bench/fuzz_api.py                        # 50 examples per operation
    .venv/bin/python bench/fuzz_api.py --max-examples 200 --seed 7
    .venv/bin/python bench/fuzz_api.py --postgres             # Postgres + Redis instead
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from local_api import free_port, start_api

ROOT = Path(__file__).resolve().parents[1]
# Checks that judge the API itself. ``positive_data_acceptance`` is left out: the
# schema types job fields loosely on purpose (the catalog decides, with a 422 that
# names the field), so a schema-valid but catalog-invalid job is a correct 422.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
]


def service_env(home: Path, port: int, postgres: bool) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "DYART_HOME": str(home), "DYART_AUTH": "required"}
    env.update(DYART_HOST="127.0.0.1", DYART_PORT=str(port), PYTHONUNBUFFERED="1")
    if postgres:
        import psycopg

        name = f"dyart_fuzz_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        env["DYART_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        env["DYART_BROKER_URL"] = "redis://127.0.0.1:6379/13"
    return env


def drop_database(env: dict[str, str]) -> None:
    url = env.get("DYART_DATABASE_URL", "")
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


SEED = """
import hashlib, os, sys
from pathlib import Path
from db import tokens
from db.models import Checkpoint, Job
from db.session import make_engine, make_session_factory, upgrade_database
from db.settings import get_settings
s = get_settings()
upgrade_database(s.database_url)
session = make_session_factory(make_engine(s))()
user = tokens.create_user(session, "fuzz")
token = tokens.create_token(session, user)
config = {"dataset": "digits", "architecture": "mlp", "method": "clean", "epochs": 2,
          "schedule": "cosine"}
job = Job(owner_id=user.id, name="seed", method="clean", dataset="digits", status="succeeded",
          config=config, total_epochs=2)
session.add(job)
session.flush()
folder = Path(s.artifacts_dir) / "jobs" / job.id
folder.mkdir(parents=True)
data = os.urandom(50_000)
(folder / "model-final.safetensors").write_bytes(data)
(folder / "model-final.json").write_text("{}")
row = Checkpoint(job_id=job.id, kind="final", stage="train", epoch=2, size=len(data),
                 path=f"jobs/{job.id}/model-final.safetensors",
                 sha256=hashlib.sha256(data).hexdigest())
session.add(row)
session.commit()
print(token, job.id, row.id)
"""


def seed(env: dict[str, str]) -> tuple[str, str, str]:
    """Migrate the database; make a user, its token, and a finished job with a checkpoint.

    Returns (plaintext token, job id, checkpoint id).
    """
    out = subprocess.run(
        [sys.executable, "-c", SEED], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    token, job_id, checkpoint_id = out.stdout.strip().splitlines()[-1].split()
    return token, job_id, checkpoint_id


def failures(junit: Path) -> dict[str, list[str]]:
    """Operation -> the first line of each failure schemathesis recorded."""
    found: dict[str, list[str]] = {}
    if not junit.is_file():
        return found
    for case in ET.parse(junit).getroot().iter("testcase"):
        for failure in [*case.iter("failure"), *case.iter("error")]:
            text = (failure.get("message") or failure.text or "").strip()
            titles = re.findall(r"^\s*-\s+(.+)$", text, re.M) or [text.splitlines()[0]]
            found.setdefault(case.get("name", "?"), []).extend(titles)
    return found


def schemathesis_run(
    url: str, token: str, args: argparse.Namespace, report: Path, config: Path | None, cwd: Path
) -> subprocess.CompletedProcess:
    """One schemathesis run; ``cwd`` takes the files it keeps between runs."""
    command = [str(Path(sys.executable).with_name("schemathesis"))]
    if config is not None:
        command += ["--config-file", str(config)]
    command += [
        "run", f"{url}/openapi.json",
        "-H", f"Authorization: Bearer {token}",
        "--checks", ",".join(CHECKS),
        "--phases", args.phases,
        "--max-examples", str(args.max_examples),
        "--seed", str(args.seed),
        "--workers", "1",
        "--request-timeout", "20",
        "--continue-on-failure",
        "--generation-database", "none",
        "--report", "junit", "--report-junit-path", str(report),
        "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=50, help="per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--postgres", action="store_true", help="Postgres + Redis")
    parser.add_argument("--keep", type=Path, help="copy the reports and the server log here")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="dyart-fuzz-") as tmp:
        home = Path(tmp)
        env = service_env(home, port, args.postgres)
        token, job_id, checkpoint_id = seed(env)
        # Pass 2 pins every id to the seeded job and checkpoint, so the fuzzer gets past
        # the 404 and into each route's own logic (ranges, cancel, resume, evaluations).
        pinned = home / "pinned.toml"
        pinned.write_text(
            f'[parameters]\n"path.job_id" = "{job_id}"\n"path.checkpoint_id" = "{checkpoint_id}"\n'
        )
        log = home / "api.log"
        proc = start_api(env, port, log)
        started = time.monotonic()
        runs, found = {}, {}
        try:
            for name, config in (("generated ids", None), ("seeded ids", pinned)):
                report = home / f"junit-{len(runs)}.xml"
                runs[name] = schemathesis_run(url, token, args, report, config, cwd=home)
                for operation, titles in failures(report).items():
                    found.setdefault(f"{operation} [{name}]", []).extend(titles)
        finally:
            proc.terminate()
            proc.wait(20)
            drop_database(env)
        seconds = time.monotonic() - started
        server_log = log.read_text(errors="replace")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for i, run in enumerate(runs.values()):
                (args.keep / f"schemathesis-{i}.txt").write_text(run.stdout + run.stderr)
            (args.keep / "api.log").write_text(server_log)
    internal = re.findall(r"internal error \w+ on (\S+ \S+)", server_log)
    for name, run in runs.items():
        summary = run.stdout[run.stdout.rfind("SUMMARY") :] or run.stdout[-3000:] + run.stderr
        print(f"=== {name}: schemathesis exit status {run.returncode}\n{summary[:3000]}")
    print(f"total {seconds:.0f} s")
    print(f"500s logged by the server: {len(internal)}")
    for where, count in Counter(internal).most_common():
        print(f"  {count} x {where}")
    print(f"operations with failures: {len(found)}")
    for operation, titles in sorted(found.items()):
        for title, count in Counter(titles).most_common():
            print(f"  {operation}: {count} x {title}")
    clean = all(run.returncode == 0 for run in runs.values())
    return 0 if clean and not internal and not found else 1


if __name__ == "__main__":
    sys.exit(main())
