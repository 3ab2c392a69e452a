"""Old module paths keep importing: `fgrlhf_ray.trainer` is `fgrlhf_ray.launch.trainer`.

Configs, checkpoints (pickled dataclasses) and users' `module:function` strings name
modules by their dotted path; the modules moved into role packages on 2026-12-04. A
meta-path finder maps each old name to the module object at its new home (the same
object, so `isinstance` checks and pickles agree) and warns once per old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED: dict[str, str] = {
    "fgrlhf_ray.audit": "fgrlhf_ray.control.audit",
    "fgrlhf_ray.controller": "fgrlhf_ray.control.controller",
    "fgrlhf_ray.checkpoint": "fgrlhf_ray.infra.checkpoint",
    "fgrlhf_ray.reliability": "fgrlhf_ray.infra.reliability",
    "fgrlhf_ray.rng": "fgrlhf_ray.infra.rng",
    "fgrlhf_ray.metrics": "fgrlhf_ray.infra.metrics",
    "fgrlhf_ray.http_retry": "fgrlhf_ray.infra.http",
    "fgrlhf_ray.testing_faults": "fgrlhf_ray.testing",  # the crashing scorers; the mechanics: infra.faults
    "fgrlhf_ray.critic": "fgrlhf_ray.workers.critic",
    "fgrlhf_ray.learner": "fgrlhf_ray.workers.learner",
    "fgrlhf_ray.reference": "fgrlhf_ray.workers.reference",
    "fgrlhf_ray.rollout": "fgrlhf_ray.workers.rollout",
    "fgrlhf_ray.scorers": "fgrlhf_ray.rewards.factory",  # score_rollout: fgrlhf_ray.workers.scorer
    "fgrlhf_ray.http_scorer": "fgrlhf_ray.rewards.http_scorer",
    "fgrlhf_ray.segments": "fgrlhf_ray.data.segments",
    "fgrlhf_ray.reward_diagnostics": "fgrlhf_ray.rewards.diagnostics",
    "fgrlhf_ray.prompts": "fgrlhf_ray.data.prompts",
    "fgrlhf_ray.demo": "fgrlhf_ray.pipelines.demo",
    "fgrlhf_ray.demo_report": "fgrlhf_ray.pipelines.demo_report",
    "fgrlhf_ray.edits": "fgrlhf_ray.pipelines.edits",
    "fgrlhf_ray.sft": "fgrlhf_ray.pipelines.sft",
    "fgrlhf_ray.policy": "fgrlhf_ray.pipelines.tiny_policy",
    "fgrlhf_ray.trainer": "fgrlhf_ray.launch.trainer",
    "fgrlhf_ray.evaluation.runner": "fgrlhf_ray.launch.evaluation",
    "fgrlhf_ray.serve.handle_scorer": "fgrlhf_ray.rewards.serve_handle_scorer",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        # Returning the already-initialised module: the import system keeps its own
        # __name__/__spec__ (it only fills attributes a module lacks) and binds the old
        # name to the same object.
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
