"""The worker's liveness file, for container health checks.

``celery inspect ping`` gets no answer from a ``solo`` worker while it trains (its
one thread runs the task), so a health check that pings marks every busy worker
unhealthy. Instead the sweep thread touches ``worker_alive_file`` every
``sweep_seconds``, training or not, and ``python -m worker.alive`` checks its age:
exit 0 when fresh, 1 with one line saying why when stale or missing. It imports
only the settings, so a check costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from db.settings import get_settings


def touch(path: Path) -> None:
    """Set the file's modification time to now (creating it and its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def age_seconds(path: Path) -> float | None:
    """Seconds since ``path`` was last touched; None when it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m worker.alive", description=__doc__)
    parser.add_argument(
        "--max-age",
        type=float,
        default=2 * settings.sweep_seconds + 60,
        help="seconds after which the file counts as stale (default 2 x sweep + 60)",
    )
    args = parser.parse_args(argv)
    path = settings.worker_alive_file
    age = age_seconds(path)
    if age is None:
        sys.stderr.write(f"worker not alive: {path} (DYART_WORKER_ALIVE_FILE) is missing\n")
        return 1
    if age > args.max_age:
        sys.stderr.write(f"worker not alive: {path} last touched {age:.0f}s ago\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
