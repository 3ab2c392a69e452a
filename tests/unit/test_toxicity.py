"""Detoxification scorers without Ray: the Perspective-style HTTP client (against a real
loopback HTTP server and an httpx mock transport), its rate limiter, the HF classifier
path with a tiny local classifier, the `kind: toxicity` reward config and the detox
rewards (holistic 1 − P(y), fine-grained −ΔP per sentence) against hand-computed values."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fgrlhf_ray.config import RewardModelConfig, load_config
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.toxicity import (
    PerspectiveClient,
    RateLimiter,
    ToxicityApiError,
    build_tiny_toxicity_classifier,
    hf_toxicity_classifier,
    toxic_label_index,
)
from fgrlhf_ray.rewards.factory import build_scorer


def word_toxicity(text: str) -> float:
    """The fake API's P(toxic): share of words equal to 'bad' (punctuation stripped)."""
    words = [w.strip(".,!?").lower() for w in text.split()]
    return sum(w == "bad" for w in words) / len(words) if words else 0.0


class FakePerspective:
    """A loopback server speaking Perspective's comments:analyze request/response format.

    `fail_first` answers the first N requests with 429 (Retry-After: 0); requests with a
    `key` other than `expected_key` get 403 like the real API.
    """

    def __init__(self, *, expected_key: str | None = None, fail_first: int = 0, malformed: bool = False):
        self.expected_key, self.fail_first, self.malformed = expected_key, fail_first, malformed
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                query = parse_qs(urlsplit(self.path).query)
                with outer.lock:
                    outer.requests.append({"path": urlsplit(self.path).path, "query": query, "body": body})
                    n = len(outer.requests)
                if n <= outer.fail_first:
                    return self._send(429, {"error": {"message": "quota"}}, {"Retry-After": "0"})
                if outer.expected_key is not None and query.get("key") != [outer.expected_key]:
                    return self._send(403, {"error": {"message": "API key not valid"}})
                if outer.malformed:
                    return self._send(200, {"attributeScores": {}})
                p = word_toxicity(body["comment"]["text"])
                self._send(200, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": p, "type": "PROBABILITY"}}},
                                 "languages": ["en"]})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ HTTP client


def test_client_speaks_the_perspective_format_over_loopback(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "k123")
    texts = ["bad bad good", "", "fine words here", "bad"]
    with FakePerspective(expected_key="k123") as api:
        client = PerspectiveClient(url=api.url, max_concurrency=3)
        assert client(texts) == pytest.approx([2 / 3, 0.0, 0.0, 1.0])
        client.close()
    assert len(api.requests) == 3  # the empty text is not sent (the API rejects empty comments)
    req = api.requests[0]
    assert req["path"] == "/v1alpha1/comments:analyze" and req["query"]["key"] == ["k123"]
    assert req["body"]["requestedAttributes"] == {"TOXICITY": {}} and req["body"]["doNotStore"] is True
    assert {r["body"]["comment"]["text"] for r in api.requests} == {"bad bad good", "fine words here", "bad"}


def test_client_retries_429_then_succeeds():
    with FakePerspective(fail_first=2) as api:
        client = PerspectiveClient(url=api.url + "/v1alpha1/comments:analyze", key_env=None, max_concurrency=1,
                                   backoff_s=0.01)
        assert client(["bad"]) == [1.0]
    assert client.requests_sent == 3 and len(api.requests) == 3


def test_client_bad_key_is_a_clear_error_without_retries(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "wrong")
    with FakePerspective(expected_key="right") as api:
        client = PerspectiveClient(url=api.url, max_retries=3, backoff_s=0.01)
        with pytest.raises(ToxicityApiError, match=r"403: API key not valid \(is the API key in \$PERSPECTIVE_API_KEY valid\?\)"):
            client(["hello"])
    assert len(api.requests) == 1
    monkeypatch.delenv("PERSPECTIVE_API_KEY")
    with FakePerspective(expected_key="right") as api:
        with pytest.raises(ToxicityApiError, match=r"\$PERSPECTIVE_API_KEY is not set"):
            PerspectiveClient(url=api.url)(["hello"])


def test_client_malformed_reply_and_unreachable_server():
    with FakePerspective(malformed=True) as api:
        with pytest.raises(ToxicityApiError, match="without attributeScores.TOXICITY.summaryScore.value"):
            PerspectiveClient(url=api.url, key_env=None)(["x"])
    port_free = FakePerspective()  # bound but never served, then closed: nothing listens
    url = port_free.url
    port_free.server.server_close()
    client = PerspectiveClient(url=url, key_env=None, max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(ToxicityApiError, match=r"failed after 2 attempt\(s\): ConnectError"):
        client(["x"])


def test_client_rejects_out_of_range_scores_via_mock_transport():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"attributeScores": {"TOXICITY": {"summaryScore": {"value": 1.5}}}})

    client = PerspectiveClient(url="http://api.test", key_env=None, transport=httpx.MockTransport(handler))
    with pytest.raises(ToxicityApiError, match="outside"):
        client(["x"])


def test_client_is_picklable():
    import pickle

    client = PerspectiveClient(url="http://api.test", key_env=None)
    clone = pickle.loads(pickle.dumps(client))
    assert clone.endpoint == "http://api.test/v1alpha1/comments:analyze" and clone._client is None


def test_rate_limiter_spaces_requests_evenly():
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.acquire()
    assert sleeps == pytest.approx([0.5, 0.5])  # first immediately, then every 1/rate s
    now[0] += 10.0  # idle time is not banked as a burst
    limiter.acquire()
    assert len(sleeps) == 2
    limiter.acquire()
    assert sleeps[-1] == pytest.approx(0.5)
    RateLimiter(None).acquire()  # unlimited: no sleep
    with pytest.raises(ConfigError):
        RateLimiter(0.0)


def test_rate_limited_client_takes_at_least_n_over_rate_seconds():
    import time

    with FakePerspective() as api:
        client = PerspectiveClient(url=api.url, key_env=None, requests_per_second=20, max_concurrency=4)
        t0 = time.perf_counter()
        client(["bad"] * 6)
        assert time.perf_counter() - t0 >= 5 / 20 - 0.01


# ------------------------------------------------------------------ detox rewards through build_scorer


def test_detox_rewards_by_hand_through_the_http_scorer(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "k")
    response = "You are nice. You are bad bad."
    with FakePerspective(expected_key="k") as api:
        fine = build_scorer(RewardModelConfig(name="tox", kind="toxicity", density="sentence", target=api.url))
        holistic = build_scorer(RewardModelConfig(name="tox", kind="toxicity", density="sequence", target=api.url))
        [f] = fine.score(["p"], [response])
        [h] = holistic.score(["p"], [response])
    # sentence 1 "You are nice." → P 0; prefix "You are nice. You are bad bad." → P 2/7.
    assert [(s.char_start, s.char_end) for s in f.segments] == [(0, 13), (14, 30)]
    assert [s.value for s in f.segments] == pytest.approx([0.0, -2 / 7])
    assert sum(s.value for s in f.segments) == pytest.approx(-word_toxicity(response))
    [seg] = h.segments
    assert seg.value == pytest.approx(1 - 2 / 7) and seg.probability == pytest.approx(2 / 7)


def test_toxicity_key_env_is_not_the_serve_token(monkeypatch):
    from fgrlhf_ray.rewards.toxicity import toxicity_function

    cfg = RewardModelConfig(name="t", kind="toxicity", density="sequence", target="http://x.test")
    assert toxicity_function(cfg).key_env == "PERSPECTIVE_API_KEY"
    # as a scorer actor receives it: a full dump, every field set
    assert toxicity_function(RewardModelConfig.model_validate(cfg.model_dump())).key_env == "PERSPECTIVE_API_KEY"
    named = cfg.model_copy(update={"token_env": "MY_KEY"})
    assert toxicity_function(named).key_env == "MY_KEY"


def test_toxicity_reward_config_checks():
    with pytest.raises(ValueError, match="exactly one of `path`"):
        RewardModelConfig(name="t", kind="toxicity", density="sequence")
    with pytest.raises(ValueError, match="exactly one of `path`"):
        RewardModelConfig(name="t", kind="toxicity", density="sequence", path="a", target="http://b")
    with pytest.raises(ValueError, match="cannot have density 'token'"):
        RewardModelConfig(name="t", kind="toxicity", density="token", path="a")
    with pytest.raises(ValueError, match="http"):
        RewardModelConfig(name="t", kind="toxicity", density="sequence", target="ftp://b")


def test_detox_config_validates():
    cfg = load_config("configs/detox.yaml")
    [rm] = cfg.reward_models
    assert rm.kind == "toxicity" and rm.density == "sentence"
    assert cfg.data.format == "jsonl" and cfg.data.prompt_field == "prompt"


# ------------------------------------------------------------------ HF classifier


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    return build_tiny_toxicity_classifier(tmp_path_factory.mktemp("toxclf"))


def test_toxic_label_index():
    assert toxic_label_index({0: "non_toxic", 1: "TOXIC"}, 2, where="m") == 1
    assert toxic_label_index({0: "toxic", 1: "other"}, 2, where="m") == 0
    assert toxic_label_index({0: "LABEL_0", 1: "LABEL_1"}, 2, where="m") == 1
    assert toxic_label_index({0: "LABEL_0"}, 1, where="m") == 0
    with pytest.raises(ConfigError, match="cannot tell which of 3 labels is 'toxic'"):
        toxic_label_index({0: "a", 1: "b", 2: "c"}, 3, where="m")


def test_hf_classifier_matches_a_direct_forward_and_batching(classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["you are nice", "the battle of princeton was fought in 1777.", "", "a b c d e f g"]
    p_batched = hf_toxicity_classifier(classifier, batch_size=4)(texts)
    p_single = hf_toxicity_classifier(classifier, batch_size=1)(texts)
    tok = AutoTokenizer.from_pretrained(classifier)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    for t, pb, ps in zip(texts, p_batched, p_single):
        with torch.no_grad():
            ref = torch.softmax(model(**tok([t], return_tensors="pt")).logits, -1)[0, 1].item()
        assert pb == pytest.approx(ref, abs=1e-5) and ps == pytest.approx(ref, abs=1e-5)
        assert 0.0 <= pb <= 1.0
    assert max(p_batched) - min(p_batched) > 1e-3  # the tiny classifier's P varies between texts


def test_hf_classifier_scorer_and_bad_path(classifier, tmp_path):
    scorer = build_scorer(RewardModelConfig(name="tox", kind="toxicity", density="sentence", path=classifier))
    p = hf_toxicity_classifier(classifier)
    r = "You are nice. The bridge opened in spring."
    [out] = scorer.score(["p"], [r])
    p1, p2 = p([r[:13], r])
    assert [s.value for s in out.segments] == pytest.approx([-p1, -(p2 - p1)], abs=1e-6)
    with pytest.raises(ConfigError, match="toxicity classifier folder not found"):
        hf_toxicity_classifier(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        hf_toxicity_classifier(str(tmp_path / "empty"))


def test_credential_env_var_per_kind():
    """Scorer actor groups forward exactly this variable: the serve token for http scorers, the
    API key (never the serve token) for a toxicity API, nothing for local models."""
    from fgrlhf_ray.config import RewardModelConfig
    from fgrlhf_ray.rewards.factory import credential_env_var

    http = RewardModelConfig(name="h", kind="http", target="http://127.0.0.1:1#m", density="sequence")
    assert credential_env_var(http) == "FGRLHF_SERVE_TOKEN"
    api = RewardModelConfig(name="t", kind="toxicity", target="http://127.0.0.1:1", density="sentence")
    assert credential_env_var(api) == "PERSPECTIVE_API_KEY"
    named = RewardModelConfig(name="t", kind="toxicity", target="http://127.0.0.1:1", density="sentence",
                              token_env="MY_KEY")
    assert credential_env_var(named) == "MY_KEY"
    local = RewardModelConfig(name="t", kind="toxicity", path="/models/tox", density="sequence")
    assert credential_env_var(local) is None
