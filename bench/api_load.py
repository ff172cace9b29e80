"""Load test of the API: job listing and job creation at N concurrent clients.

Starts the API in a uvicorn subprocess (embedded settings: SQLite database and
the serverless SQLite broker, in a fresh temporary home; or Postgres + Redis
with ``--postgres``), with no worker, so created jobs just queue. Each scenario
sends a fixed number of requests from N concurrent httpx clients over loopback
after a short warm-up, and prints p50/p99 latency and throughput.

    .venv/bin/python bench/api_load.py                  # SQLite, 50 clients, 2,000 requests
    .venv/bin/python bench/api_load.py --postgres --requests 2000 --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from local_api import free_port, start_api

ROOT = Path(__file__).resolve().parents[1]
JOB = {
    "dataset": "digits",
    "architecture": "mlp",
    "method": "clean",
    "epochs": 1,
    "schedule": "cosine",
}
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def fresh_postgres(name: str) -> str:
    """An empty database ``name`` on the local Postgres; returns its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def service_env(home: Path, port: int, postgres: bool) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "DYART_HOME": str(home)}
    env.update(DYART_HOST="127.0.0.1", DYART_PORT=str(port), DYART_AUTH="auto")
    if postgres:
        env["DYART_DATABASE_URL"] = fresh_postgres("dyart_bench")
        env["DYART_BROKER_URL"] = "redis://127.0.0.1:6379/14"
        env["DYART_RESULT_BACKEND"] = "redis://127.0.0.1:6379/14"
    return env


async def run_scenario(base: str, method: str, path: str, body: dict | None, n: int, clients: int):
    """Send ``n`` requests from ``clients`` concurrent workers; latencies in seconds."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            for _ in counter:
                start = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code >= 400

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def summary(name: str, latencies: list[float], errors: int, wall: float) -> str:
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"| {name} | {len(latencies)} | {errors} | {cuts[49] * 1000:.1f} | "
        f"{cuts[98] * 1000:.1f} | {len(latencies) / wall:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--postgres", action="store_true", help="Postgres + Redis instead")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dyart-bench-") as tmp:
        home = Path(tmp)
        proc = start_api(
            service_env(home, port, args.postgres),
            port,
            home / "api.log",
            migrate=True,
            ready="health/ready",
        )
        base = f"http://127.0.0.1:{port}/api/v1"
        try:
            rows = []
            for name, method, path, body in (
                ("create job (POST /jobs)", "POST", "/jobs", JOB),
                ("list jobs (GET /jobs?limit=50)", "GET", "/jobs?limit=50", None),
            ):
                asyncio.run(run_scenario(base, method, path, body, 100, args.clients))  # warm-up
                rows.append(
                    summary(
                        name,
                        *asyncio.run(
                            run_scenario(base, method, path, body, args.requests, args.clients)
                        ),
                    )
                )
        finally:
            proc.terminate()
            proc.wait(20)
    backend = "Postgres + Redis" if args.postgres else "SQLite + SQLite broker (embedded)"
    print(f"backend: {backend}; {args.clients} concurrent clients; one uvicorn process")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print("| scenario | requests | errors | p50 ms | p99 ms | requests/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
