"""`ServeHandleScorer` retries over a fake `DeploymentHandle` (no Ray): the shared retry loop."""

from __future__ import annotations

import pytest

from fgrlhf_ray.rewards.serve_handle_scorer import ServeHandleScorer, ServeScorerError
from fgrlhf_ray.types import Segment, SegmentRewards


class Result:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def result(self, timeout_s=None):
        if self.error is not None:
            raise self.error
        return self.value


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class FakeHandle:
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0
        self.info = Method(lambda: Result({"density": "sequence", "max_batch_size": 4}))
        self.score = Method(self._score)

    def _score(self, chunk):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            return Result(error=RuntimeError("Traceback ...\nreplica died"))
        return Result([SegmentRewards([Segment(0, len(r), float(len(r)))], "sequence", "deployment")
                       for _, r in chunk])


@pytest.fixture
def waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("fgrlhf_ray.infra.http.time.sleep", slept.append)
    return slept


def scorer(handle, **kwargs) -> ServeHandleScorer:
    s = ServeHandleScorer(name="c", app_name="app", density="sequence", **kwargs)
    s._handle = handle
    return s


def test_a_failed_batch_is_retried_1_then_2_seconds_apart(waits):
    handle = FakeHandle(failures=2)
    out = scorer(handle, max_retries=2).score(["q"] * 3, ["a", "bb", "ccc"])
    assert [v.segments[0].value for v in out] == [1.0, 2.0, 3.0] and all(v.model_name == "c" for v in out)
    assert waits == [1.0, 2.0]


def test_gives_up_with_the_last_error_line(waits):
    with pytest.raises(ServeScorerError, match=r"serve scorer 'c': app/c failed after 2 attempt\(s\): "
                                               r"RuntimeError: replica died$"):
        scorer(FakeHandle(failures=10), max_retries=1).score(["q"], ["a"])
    assert waits == [1.0]
