"""Shared fixtures for integration tests: tiny local models and one local Ray cluster.

- `tiny_llama_factory(**kwargs) -> Path`: builds (once per session per kwargs) a tiny
  Llama + BPE tokenizer folder with `fgrlhf_ray.testing.build_tiny_llama`.
- `tiny_llama_dir` / `tiny_llama_tied_dir`: the default untied / tied models.
- `ray_local`: a session-scoped local `ray.init` (shut down at session end). Its
  logical CPU count is `FGRLHF_TEST_RAY_CPUS` (default 4): logical, so two vLLM engines
  plus a learner fit on a 2-core box without deadlocking on resources.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fgrlhf_ray.testing import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_factory(tmp_path_factory):
    cache: dict[str, Path] = {}

    def make(**kwargs) -> Path:
        key = json.dumps(kwargs, sort_keys=True)
        if key not in cache:
            out = tmp_path_factory.mktemp("tiny_llama")
            cache[key] = build_tiny_llama(out, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama_factory) -> Path:
    return tiny_llama_factory(tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tiny_llama_factory) -> Path:
    return tiny_llama_factory(tie_word_embeddings=True)


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another fixture/test started it: reuse, don't own it
        yield ray
        return
    ray.init(
        # Always a fresh cluster of our own: a bare ray.init() would join any cluster that
        # `ray start` left on this machine (a developer's, or a job-submission test's).
        address="local",
        num_cpus=int(os.environ.get("FGRLHF_TEST_RAY_CPUS", "4")),
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        log_to_driver=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
