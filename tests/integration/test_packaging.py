"""A built wheel installs `actors/` and `serve/` as fgrlhf_ray.actors / fgrlhf_ray.serve only."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_maps_actors_and_serve_under_fgrlhf_ray(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("fgrlhf_ray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fgrlhf_ray/actors/__init__.py" in names and "fgrlhf_ray/serve/__init__.py" in names
    assert not any(n.startswith(("actors/", "serve/")) for n in names), "generic top-level packages installed"
    # Every package directory in the source tree made it into the wheel.
    for init in list((REPO / "fgrlhf_ray").rglob("__init__.py")):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} missing from the wheel: add it to [tool.setuptools] packages"
    # And a plain (non-editable) install imports them.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    code = "import fgrlhf_ray.actors, fgrlhf_ray.serve, fgrlhf_ray; print(fgrlhf_ray.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True, timeout=120)
    assert out.stdout.strip().startswith(str(target))


def test_editable_install_imports_actors_and_serve():
    import fgrlhf_ray.actors
    import fgrlhf_ray.serve

    assert Path(fgrlhf_ray.actors.__file__).parent == REPO / "actors"
    assert Path(fgrlhf_ray.serve.__file__).parent == REPO / "serve"
