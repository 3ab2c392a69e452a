"""`fgrlhf_ray.algo` and `fgrlhf_ray.data.segments` stay pure: no ray / vllm / deepspeed (DESIGN style 8)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ray", "vllm", "deepspeed")


def test_algo_and_segments_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        "import fgrlhf_ray.algo, fgrlhf_ray.data.segments\n"
        "from fgrlhf_ray.algo import rewards, kl, advantages, losses, experience, estimators, weighting\n"
        "fgrlhf_ray.data.segments.split_sub_sentences('One two three four five, six seven eight nine ten.')\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"fgrlhf_ray.algo pulled in: {out.stdout.strip()}"
