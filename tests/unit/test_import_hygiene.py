"""`fgrlhf_ray.config` (and the CLI's startup) must not pull in ray / vllm / deepspeed."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ray", "vllm", "deepspeed")


def loaded_heavy_modules(statement: str) -> list[str]:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_config_imports_no_heavy_frameworks():
    assert loaded_heavy_modules("import fgrlhf_ray.config, fgrlhf_ray.types, fgrlhf_ray.errors") == []


def test_cli_parser_imports_no_heavy_frameworks():
    assert loaded_heavy_modules("import fgrlhf_ray.cli as c; c.build_parser()") == []
