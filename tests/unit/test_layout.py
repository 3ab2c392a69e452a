"""The package layout's rules (README "Package layout"), checked on the source tree.

- Only `fgrlhf_ray.launch` (the code that starts a run on Ray) imports the Ray shells in
  `fgrlhf_ray.actors`; the shells are imported by nobody else in the core.
- No import circles among the packages, counting imports inside functions too (a lazy
  import is still a dependency).
- Old flat module paths (`fgrlhf_ray.trainer`, ...) still import, as the same module
  objects, so `module:function` strings in configs and pickles in checkpoints keep working.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fgrlhf_ray._moved import MOVED

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"fgrlhf_ray": ROOT / "fgrlhf_ray", "fgrlhf_ray.actors": ROOT / "actors", "fgrlhf_ray.serve": ROOT / "serve"}


def _modules():
    """(dotted module name, parsed AST) for every module of the installed package tree."""
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            yield name, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("fgrlhf_ray.")}


def _package(module: str) -> str | None:
    """The role package a module belongs to (None for top-level modules such as config)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in ("actors", "serve") or (ROOT / "fgrlhf_ray" / parts[1]).is_dir():
        return parts[1]
    return None


def test_only_launch_imports_the_ray_shells():
    offenders = sorted(
        f"{name} imports {target}"
        for name, tree in _modules()
        for target in _imports(tree)
        if target.startswith("fgrlhf_ray.actors") and _package(name) not in ("launch", "actors")
    )
    assert offenders == [], "only fgrlhf_ray.launch may import fgrlhf_ray.actors:\n" + "\n".join(offenders)


def _circles(edges: dict[str, set[str]]) -> list[str]:
    """Every package that lies on an import circle, with one circle through it."""

    def cycle_from(start: str, node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, [*path, nxt])
                if found:
                    return found
        return None

    return [" -> ".join(c) for p in sorted(edges) if (c := cycle_from(p, p, [p]))]


def test_no_import_circles_among_packages():
    edges: dict[str, set[str]] = {}
    for name, tree in _modules():
        src = _package(name)
        for target in _imports(tree):
            dst = _package(target)
            if src and dst and src != dst:
                edges.setdefault(src, set()).add(dst)
    assert {"control", "launch", "workers", "rewards", "pipelines", "actors"} <= set(edges)  # the scan sees them
    assert _circles(edges) == [], "import circles among packages:\n" + "\n".join(_circles(edges))


def test_circle_finder_finds_long_circles_and_lazy_imports():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a", "b -> c -> a -> b",
                                                                          "c -> a -> b -> c"]
    assert _circles({"a": {"b"}, "b": set()}) == []
    lazy = ast.parse("def f():\n    from fgrlhf_ray.actors.learner import LearnerGroup\n")
    assert "fgrlhf_ray.actors.learner" in _imports(lazy)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_are_the_new_modules(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_old_function_target_string_resolves():
    from fgrlhf_ray.infra.targets import import_target
    from fgrlhf_ray.rewards.builtin import brevity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert import_target("fgrlhf_ray.testing_faults:crashing_brevity").__module__ == "fgrlhf_ray.testing"
        old = import_target("fgrlhf_ray.segments:split_sentences")
    from fgrlhf_ray.data.segments import split_sentences

    assert old is split_sentences and brevity(["q"], ["a b"]) == brevity(["q"], ["a b"])


def test_pickles_written_under_old_paths_load():
    # A pickle naming `fgrlhf_ray.controller.StepResult` (as a checkpoint written before
    # the move would) loads into today's class, in a fresh interpreter.
    code = (
        "import pickle, pickletools\n"
        "from fgrlhf_ray.control.controller import StepResult\n"
        "blob = pickle.dumps(StepResult(step=3, metrics={'a': 1.0}), protocol=2)\n"
        "blob = blob.replace(b'fgrlhf_ray.control.controller', b'fgrlhf_ray.controller')\n"
        "assert b'fgrlhf_ray.controller\\n' in blob or b'fgrlhf_ray.controller' in blob\n"
        "r = pickle.loads(blob)\n"
        "assert type(r) is StepResult and r.step == 3, r\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
