"""The seams of DESIGN.md §1, checked by importing in fresh interpreters.

A static import graph can miss a package's ``__init__`` or an import made at
call time, so each check imports the real module with the forbidden packages
blocked: ``sys.modules[name] = None`` makes any import of ``name`` fail.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_with_blocked(module: str, blocked: list[str]) -> subprocess.CompletedProcess:
    code = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\nimport {module}\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("api.main", ["torch", "torchvision", "worker", "worker.tasks"]),
        ("db.models", ["torch", "fastapi", "celery", "api", "worker"]),
        ("dyart.catalog", ["torch", "numpy", "sqlalchemy", "fastapi", "celery"]),
        ("dyart.config", ["torch", "sqlalchemy", "fastapi", "celery"]),
        ("dyart.train", ["api", "db", "worker", "fastapi", "celery", "sqlalchemy"]),
        ("dyart.cli", ["api", "db", "worker", "fastapi", "celery", "sqlalchemy"]),
        ("worker.tasks", ["api", "fastapi"]),
    ],
)
def test_module_imports_without_forbidden_packages(module, blocked):
    result = _import_with_blocked(module, blocked)
    assert result.returncode == 0, f"{module} imports one of {blocked}:\n{result.stderr}"


def test_blocking_really_blocks():
    # The check above would pass vacuously if blocking did nothing.
    result = _import_with_blocked("dyart.train", ["torch"])
    assert result.returncode != 0
    assert "torch" in result.stderr


def test_import_linter_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout
