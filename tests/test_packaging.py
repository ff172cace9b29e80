"""The installed package, as the Docker images build it: each image's COPY lines give
the build context, and a wheel built from exactly those files must carry the
license and (for the API) the dashboard, found by ``api.main`` once installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PIP = [sys.executable, "-m", "pip"]


def _image_sources(dockerfile: str, into: Path) -> Path:
    """Copy what ``docker/<dockerfile>``'s COPY lines copy into its WORKDIR; that folder."""
    for line in (ROOT / "docker" / dockerfile).read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        for source in sources:
            target = into / dest / Path(source).name if dest.endswith("/") else into / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    return into


def _wheel(source: Path, out: Path) -> Path:
    command = [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    [wheel] = out.glob("*.whl")
    return wheel


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile"])
def test_each_image_installs_the_license(dockerfile, tmp_path):
    wheel = _wheel(_image_sources(dockerfile, tmp_path / "app"), tmp_path / "wheel")

    names = zipfile.ZipFile(wheel).namelist()
    assert "dyart-0.1.0.dist-info/licenses/LICENSE" in names


def test_the_api_image_installs_the_dashboard_where_the_api_finds_it(tmp_path):
    wheel = _wheel(_image_sources("api.Dockerfile", tmp_path / "app"), tmp_path / "wheel")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"frontend/index.html", "frontend/js/app.js", "frontend/style.css"} <= set(names)

    site = tmp_path / "site-packages"
    command = [*PIP, "install", "-q", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*command, str(wheel)], check=True, capture_output=True, timeout=300)
    probe = "import api.main as m; print(m.__file__); print(m.FRONTEND_DIR / 'index.html')"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,  # not the checkout: the installed copy is what gets imported
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    module, index = (Path(line) for line in result.stdout.splitlines())
    assert module.is_relative_to(site) and index.is_relative_to(site)
    assert index.read_text() == (ROOT / "frontend" / "index.html").read_text()
