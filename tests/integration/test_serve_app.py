"""Real Ray Serve over real HTTP on loopback: one application (deployed by
`fgrlhf serve --no-block` into the test's local Ray) shared by every test in this module.

Covers: scores equal to in-process `score()`; weighted totals and per-token rewards equal to
training's placement; every kind of bad input → 4xx + JSON reason naming the field, with a
valid request succeeding right after; bearer auth; a failing call fails only its own
request; a broken replica is replaced by Serve's health check; bounded concurrent load
with zero errors; `ServeHandleScorer` and `HttpScorer` equal in-process scores.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import torch
import yaml

from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.http_scorer import HttpScorer, HttpScorerError
from fgrlhf_ray.rewards import FunctionScorer, load_reward_model
from fgrlhf_ray.serve import testing as faults
from fgrlhf_ray.rewards.serve_handle_scorer import ServeHandleScorer
from fgrlhf_ray.infra.ports import free_port

pytestmark = pytest.mark.integration

APP = "fgrlhf-rm-test"
TOKEN_ENV = "FGRLHF_TEST_SERVE_TOKEN"
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ITEMS = 8

# name → (weight, mean, std) the server must apply (completeness: stored μ/σ; token_level: config override).
NORMS = {"relevance": (0.3, 0.0, 1.0), "completeness": (0.3, 0.25, 2.0), "token_level": (0.5, 0.1, 3.0),
         "faulty": (1.0, 0.0, 1.0)}
DENSITIES = {"relevance": "sub_sentence", "completeness": "sequence", "token_level": "token", "faulty": "sequence"}

PROMPTS = [
    "question: who led the british in the battle of princeton? answer:",
    "question: when was the city founded? answer:",
    "question: what is the capital of france? answer:",
    "question: describe the battle. answer:",
    "question: what did the tourists see? answer:",
    "question: anything else? answer:",
]
RESPONSES = [
    "General Cornwallis led them, and the British lost the battle of Princeton in 1777. Washington advanced!",
    "It was founded in the year 1820, and it is known for its old bridges; many tourists visit the city.",
    "Paris is the capital of France? Berlin is the capital of Germany, and Rome of Italy.",
    "The Battle of Princeton was fought near Princeton, New Jersey on January 3, 1777.",
    "café naïve über — “quoted” text, emoji 🙂 and accents é à ü. It has two sentences.",
    "Short.",
]



@dataclass
class Served:
    url: str
    paths: dict
    backbone: str


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    from fgrlhf_ray.cli import main as cli_main

    root = tmp_path_factory.mktemp("serve")
    paths = faults.build_tiny_reward_models(root / "rms")
    port = free_port()
    config = {
        "port": port,
        "app_name": APP,
        "token_env": TOKEN_ENV,
        "require_token": True,
        "max_items": MAX_ITEMS,
        "max_body_bytes": 65536,
        "max_chars": 2000,
        "tokenizer": str(root / "rms" / "backbone"),
        "reward_models": [
            {"name": "relevance", "kind": "segment_classifier", "path": paths["relevance"],
             "density": "sub_sentence", "weight": 0.3, "num_cpus": 0.5,
             "serve": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}},
            {"name": "completeness", "kind": "sequence_preference", "path": paths["completeness"],
             "density": "sequence", "weight": 0.3, "num_cpus": 0.5},
            {"name": "token_level", "kind": "token_level", "path": paths["token_level"], "density": "token",
             "weight": 0.5, "normalize_mean": 0.1, "normalize_std": 3.0, "num_cpus": 0.5},
            {"name": "faulty", "kind": "function", "target": "fgrlhf_ray.serve.testing:faulty_reward",
             "density": "sequence", "num_cpus": 0.1,
             "serve": {"health_check_period_s": 1.0, "health_check_timeout_s": 10.0, "batch_wait_timeout_s": 0.05}},
        ],
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN
    try:
        assert cli_main(["serve", "--config", str(path), "--no-block"]) == 0
        yield Served(url=f"http://127.0.0.1:{port}", paths=paths, backbone=str(root / "rms" / "backbone"))
    finally:
        serve.shutdown()
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=60.0, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def local_models(served):
    models = {name: load_reward_model(p) for name, p in served.paths.items()}
    models["faulty"] = FunctionScorer(target="fgrlhf_ray.serve.testing:faulty_reward", name="faulty",
                                      density="sequence")
    return models


def assert_same_segments(remote, local, *, where=""):
    """Remote segments (dicts or `Segment`s) equal the in-process ones: spans and labels exactly,
    values / probabilities up to float noise from different batch padding."""
    as_tuple = (lambda s: (s["char_start"], s["char_end"], s["label"], s["value"], s["probability"])) \
        if remote and isinstance(remote[0], dict) else \
        (lambda s: (s.char_start, s.char_end, s.label, s.value, s.probability))
    remote = [as_tuple(s) for s in remote]
    assert len(remote) == len(local.segments), where
    for r, s in zip(remote, local.segments):
        assert r[:3] == (s.char_start, s.char_end, s.label), where
        assert r[3] == pytest.approx(s.value, abs=1e-5), where
        assert (r[4] is None) == (s.probability is None), where
        if s.probability is not None:
            assert r[4] == pytest.approx(s.probability, abs=1e-5), where


def score(client, items, **extra):
    return client.post("/v1/score", json={"items": items, **extra})


def valid_request_succeeds(client) -> None:
    r = score(client, [{"prompt": PROMPTS[0], "response": RESPONSES[0]}])
    assert r.status_code == 200, r.text
    assert set(r.json()["results"][0]["scores"]) == set(NORMS)


# ------------------------------------------------------------------------ endpoints


def test_models_endpoint_describes_every_model(client, served):
    body = client.get("/v1/models").json()
    assert body["app"] == APP and body["auth_required"] is True
    assert body["limits"]["max_items"] == MAX_ITEMS
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["relevance", "completeness", "token_level", "faulty"]
    for name, (w, mean, std) in NORMS.items():
        m = by_name[name]
        assert m["density"] == DENSITIES[name] and m["weight"] == w
        assert (m["normalization"]["mean"], m["normalization"]["std"]) == (mean, std)
    assert by_name["relevance"]["kind"] == "segment_classifier" and by_name["relevance"]["backbone"] == served.backbone
    assert by_name["completeness"]["stored_normalization"] == {"mean": 0.25, "std": 2.0}
    assert by_name["faulty"]["kind"] == "function"
    assert by_name["faulty"]["backbone"] == "fgrlhf_ray.serve.testing:faulty_reward"
    assert by_name["relevance"]["max_batch_size"] == 4


def test_healthz_and_openapi_need_no_token(served):
    with httpx.Client(base_url=served.url, timeout=30.0) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "models": {n: "ok" for n in NORMS}}
        schema = anonymous.get("/openapi.json").json()
    assert {"/v1/score", "/v1/models", "/healthz"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    request_ref = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request_ref == {"$ref": "#/components/schemas/ScoreRequest"}
    assert {"items", "models", "return_total", "return_token_rewards"} <= set(components["ScoreRequest"]["properties"])
    assert {"prompt", "response", "token_offsets"} <= set(components["ScoreItem"]["properties"])
    assert {"ScoreResponse", "ModelsResponse", "ErrorResponse"} <= set(components)
    assert "422" in schema["paths"]["/v1/score"]["post"]["responses"]


# ----------------------------------------------------------------- score equality


def test_scores_equal_in_process_score(client, local_models):
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]
    r = score(client, items, return_total=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == list(NORMS)
    labels = set()
    for name, model in local_models.items():
        local = model.score(PROMPTS, RESPONSES)
        for i, result in enumerate(body["results"]):
            remote = result["scores"][name]
            assert remote["density"] == DENSITIES[name]
            assert_same_segments(remote["segments"], local[i], where=f"{name} item {i}")
            w, mean, std = NORMS[name]
            expected = sum(w * (s.value - mean) / std for s in local[i].segments)
            assert remote["weighted_total"] == pytest.approx(expected, abs=1e-4)
            labels.update(s["label"] for s in remote["segments"])
    assert {"error", "no_error"} <= labels  # the tiny relevance model gives both verdicts
    for result in body["results"]:
        assert result["weighted_total"] == pytest.approx(
            sum(result["scores"][n]["weighted_total"] for n in NORMS), abs=1e-5)


def test_model_subset_and_single_item_object(client, local_models):
    r = client.post("/v1/score", json={"items": {"prompt": PROMPTS[1], "response": RESPONSES[1]},
                                       "models": ["completeness"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == ["completeness"] and list(body["results"][0]["scores"]) == ["completeness"]
    assert body["results"][0]["weighted_total"] is None and body["results"][0]["token_rewards"] is None
    local = local_models["completeness"].score(PROMPTS[1:2], RESPONSES[1:2])[0]
    assert_same_segments(body["results"][0]["scores"]["completeness"]["segments"], local)


def _word_offsets(text: str) -> list[list[int]]:
    """Policy-like token spans: each word with its leading space, plus an empty EOS span."""
    import re

    spans = [[m.start(), m.end()] for m in re.finditer(r"\s*\S+", text)]
    return spans + [[len(text), len(text)]]


def test_token_rewards_equal_training_placement(client, local_models, served):
    items = [{"prompt": p, "response": r, "token_offsets": _word_offsets(r)} for p, r in zip(PROMPTS, RESPONSES)]
    r = score(client, items, return_total=True, return_token_rewards=True)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    offsets = [[tuple(o) for o in _word_offsets(x)] for x in RESPONSES]
    lengths = [len(o) for o in offsets]
    mask = torch.zeros(len(RESPONSES), max(lengths))
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    outputs = [ScorerOutput.from_segment_rewards(name, local_models[name].score(PROMPTS, RESPONSES), weight=w,
                                                 mean=mean, std=std) for name, (w, mean, std) in NORMS.items()]
    expected, _, _ = place_segment_rewards(outputs, token_offsets=offsets, action_mask=mask)  # training's code
    for i, result in enumerate(results):
        assert result["token_offsets"] == [list(o) for o in offsets[i]]
        assert result["token_rewards"] == pytest.approx(expected[i, : lengths[i]].tolist(), abs=1e-4)
        assert sum(result["token_rewards"]) == pytest.approx(result["weighted_total"], abs=1e-4)

    # Without offsets the server splits with its configured tokenizer's offset mapping.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served.backbone)
    r = score(client, [{"prompt": PROMPTS[0], "response": RESPONSES[0]}], models=["relevance"],
              return_token_rewards=True)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    enc = tok(RESPONSES[0], add_special_tokens=False, return_offsets_mapping=True)
    assert result["token_offsets"] == [list(o) for o in enc["offset_mapping"]]
    assert len(result["token_rewards"]) == len(enc["offset_mapping"])


# -------------------------------------------------------------------- bad input

ITEM = {"prompt": PROMPTS[0], "response": RESPONSES[0]}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "content, headers, status, code, field",
    [
        (b'{"items": [{"prompt": "a", "response": ', JSON, 400, "invalid_json", None),
        (b'{"items": [{"prompt": "a", "response": "\xff\xfe"}]}', JSON, 400, "invalid_utf8", None),
        (b"", JSON, 400, "empty_body", None),
        (b'{"items": [{"prompt": "a"}]}', JSON, 422, "validation_error", "items.0.response"),
        (b'{"items": [{"prompt": "a", "response": "b", "reward": 1}]}', JSON, 422, "validation_error", "items.0.reward"),
        (b'{"items": [{"prompt": "a", "response": "b"}], "model": "x"}', JSON, 422, "validation_error", "model"),
        (b'{"items": [{"prompt": ["a"], "response": "b"}]}', JSON, 422, "validation_error", "items.0.prompt"),
        (b'{"items": [{"prompt": "a", "response": "b"}], "return_total": 1}', JSON, 422, "validation_error",
         "return_total"),
        (b'{"items": [{"prompt": "a", "response": ""}]}', JSON, 422, "validation_error", "items.0.response"),
        (b'{"items": [{"prompt": "", "response": "b"}]}', JSON, 422, "validation_error", "items.0.prompt"),
        (b'{"items": [{"prompt": "a", "response": "b"}], "models": ["helpfulness"]}', JSON, 422,
         "validation_error", "models.0"),
        (b'{"items": [{"prompt": "a", "response": "' + b"x" * 2001 + b'"}]}', JSON, 422, "validation_error",
         "items.0.response"),
        (b'{"items": [{"prompt": "a", "response": "bc", "token_offsets": [[0, 9]]}], "return_token_rewards": true}',
         JSON, 422, "validation_error", "items.0.token_offsets.0"),
        (b"[]", JSON, 422, "validation_error", None),
        (b'{"items": [{"prompt": "a", "response": "b"}]}', {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type", None),
        (b'{"items": [' + b",".join([b'{"prompt": "a", "response": "b"}'] * (MAX_ITEMS + 1)) + b"]}", JSON, 413,
         "too_many_items", "items"),
        (b'{"items": [{"prompt": "a", "response": "' + b"x" * 200_000 + b'"}]}', JSON, 413, "body_too_large", None),
    ],
    ids=["malformed-json", "invalid-utf8", "empty-body", "missing-field", "extra-item-field", "extra-top-field",
         "wrong-type-str", "wrong-type-bool", "empty-response", "empty-prompt", "unknown-model", "too-long-text",
         "bad-token-offsets", "not-an-object", "wrong-content-type", "too-many-items", "enormous-body"],
)
def test_bad_input_gets_4xx_with_reason_then_valid_request_succeeds(client, content, headers, status, code, field):
    r = client.post("/v1/score", content=content, headers=headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["field"] == field and body["reason"]
    if field:
        assert field in body["reason"]
    valid_request_succeeds(client)


def test_enormous_chunked_body_without_content_length_is_413(client):
    def chunks():
        yield b'{"items": [{"prompt": "a", "response": "'
        for _ in range(100):
            yield b"x" * 10_000
        yield b'"}]}'

    r = client.post("/v1/score", content=chunks(), headers=JSON)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    valid_request_succeeds(client)


def test_deploy_refuses_a_second_proxy_address(served):
    from fgrlhf_ray.serve.app import deploy
    from fgrlhf_ray.serve.config import ServeConfig

    port = int(served.url.rsplit(":", 1)[1])
    other = ServeConfig.model_validate({"port": port + 1, "app_name": "never-deployed", "reward_models": [
        {"name": "wc", "kind": "function", "target": "fgrlhf_ray.serve.testing:word_count_reward",
         "density": "sequence"}]})
    with pytest.raises(ConfigError, match=f"already runs in this cluster with its HTTP proxy on 127.0.0.1:{port}"):
        deploy(other)


def test_unknown_route_and_method_are_4xx(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/score").status_code == 405


# ------------------------------------------------------------------------ auth


def test_auth(served):
    body = {"items": [ITEM]}
    with httpx.Client(base_url=served.url, timeout=30.0) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            r = anonymous.post("/v1/score", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/v1/models", headers=AUTH).status_code == 200
        assert anonymous.post("/v1/score", json=body, headers=AUTH).status_code == 200


# ------------------------------------------------------------------- failures


def _faulty_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle("faulty", app_name=APP).info.remote().result(timeout_s=30)


def _faulty_replica() -> str:
    return _faulty_info()["replica_id"]


def test_failing_call_fails_only_its_own_request(client):
    before = _faulty_info()
    responses = ["one", "two two", faults.FAIL, "three 333", "four", "five five"]
    with ThreadPoolExecutor(len(responses)) as pool:
        replies = list(pool.map(
            lambda resp: score(client, [{"prompt": "q", "response": resp}], models=["faulty"]), responses))
    for resp, r in zip(responses, replies):
        if resp == faults.FAIL:
            assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
            assert "a test request asked this call to fail" in r.json()["reason"]
        else:
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["scores"]["faulty"]["raw_total"] == pytest.approx(len(resp) / 100)
    after = _faulty_info()
    assert after["stats"]["failed_chunks"] == before["stats"]["failed_chunks"] + 1  # only the FAIL chunk
    assert after["stats"]["items"] == before["stats"]["items"] + len(responses)
    time.sleep(3.0)  # several health checks: the probe passes, so the replica is kept
    assert _faulty_replica() == before["replica_id"]
    valid_request_succeeds(client)


def test_broken_replica_is_replaced_by_health_check(client):
    before = _faulty_replica()
    r = score(client, [{"prompt": "q", "response": faults.POISON}], models=["faulty"])
    assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
    deadline = time.monotonic() + 90
    statuses = []
    while time.monotonic() < deadline:
        r = score(client, [{"prompt": "q", "response": "healed?"}], models=["faulty"])
        statuses.append(r.status_code)
        assert r.status_code in (200, 503), r.text  # unavailable while broken, never a 500
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert statuses[-1] == 200, statuses
    assert r.json()["results"][0]["scores"]["faulty"]["raw_total"] == pytest.approx(0.07)
    assert _faulty_replica() != before
    valid_request_succeeds(client)


# ----------------------------------------------------------------------- load


def test_bounded_concurrent_load_has_no_errors(served, local_models):
    clients, per_client = 8, 10
    expected = local_models["completeness"].score(PROMPTS, RESPONSES)
    errors: list[str] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        with httpx.Client(base_url=served.url, timeout=120.0, headers=AUTH) as c:
            for j in range(per_client):
                i = (k + j) % len(RESPONSES)
                r = score(c, [{"prompt": PROMPTS[i], "response": RESPONSES[i]}], models=["relevance", "completeness"])
                if r.status_code != 200:
                    with lock:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                got = r.json()["results"][0]["scores"]["completeness"]["segments"][0]["value"]
                if abs(got - expected[i].segments[0].value) > 1e-5:
                    with lock:
                        errors.append(f"item {i}: {got} != {expected[i].segments[0].value}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------ training scorers


@pytest.mark.parametrize("name", ["relevance", "completeness", "token_level", "faulty"])
def test_serve_handle_scorer_equals_in_process(served, local_models, name):
    scorer = ServeHandleScorer.from_target(name=name, target=f"{APP}/{name}", density=DENSITIES[name])
    remote = scorer.score(PROMPTS * 2, RESPONSES * 2)  # more than one chunk for relevance (max_batch_size 4)
    local = local_models[name].score(PROMPTS * 2, RESPONSES * 2)
    assert len(remote) == len(local)
    for i, (r, l) in enumerate(zip(remote, local)):
        assert r.model_name == name and r.density == DENSITIES[name]
        assert_same_segments(r.segments, l, where=f"{name} item {i}")
    _, mean, std = NORMS[name]
    assert scorer.normalization == (mean, std)


def test_serve_handle_scorer_scores_empty_responses_like_in_process(served, local_models):
    scorer = ServeHandleScorer(name="c3", app_name=APP, deployment_name="completeness", density="sequence")
    remote = scorer.score(["question: x? answer:"], [""])
    assert_same_segments(remote[0].segments, local_models["completeness"].score(["question: x? answer:"], [""])[0])
    assert remote[0].model_name == "c3"


def test_serve_handle_scorer_config_errors(served):
    with pytest.raises(ConfigError, match="density 'token' but deployment .* serves density 'sub_sentence'"):
        ServeHandleScorer(name="relevance", app_name=APP, density="token").score(["q"], ["a"])
    with pytest.raises(ConfigError, match="no deployment 'nothing'"):
        ServeHandleScorer(name="nothing", app_name=APP, density="sequence").score(["q"], ["a"])
    with pytest.raises(ConfigError, match="target must be"):
        ServeHandleScorer.from_target(name="x", target="a/b/c", density="sequence")


@pytest.mark.parametrize("name", ["relevance", "completeness", "token_level"])
def test_http_scorer_equals_in_process(served, local_models, name):
    scorer = HttpScorer(name=name, url=served.url, density=DENSITIES[name], token_env=TOKEN_ENV, timeout_s=60,
                        max_retries=2, max_concurrency=3, max_items_per_request=3)
    try:
        remote = scorer.score(PROMPTS, RESPONSES)
        local = local_models[name].score(PROMPTS, RESPONSES)
        for i, (r, l) in enumerate(zip(remote, local)):
            assert r.model_name == name and r.density == DENSITIES[name]
            assert_same_segments(r.segments, l, where=f"{name} item {i}")
        _, mean, std = NORMS[name]
        assert scorer.normalization == (mean, std)
    finally:
        scorer.close()


def test_http_scorer_model_fragment_and_auth_errors(served, local_models, monkeypatch):
    scorer = HttpScorer(name="c3", url=f"{served.url}#completeness", density="sequence", token_env=TOKEN_ENV)
    remote = scorer.score(PROMPTS[:2], RESPONSES[:2])
    for r, l in zip(remote, local_models["completeness"].score(PROMPTS[:2], RESPONSES[:2])):
        assert_same_segments(r.segments, l)
    scorer.close()
    monkeypatch.setenv("FGRLHF_TEST_WRONG_TOKEN", "nope")
    wrong = HttpScorer(name="completeness", url=served.url, density="sequence", token_env="FGRLHF_TEST_WRONG_TOKEN",
                       max_retries=3)
    start = time.monotonic()
    with pytest.raises(HttpScorerError, match="401: invalid bearer token"):
        wrong.score(PROMPTS[:1], RESPONSES[:1])
    assert time.monotonic() - start < 5  # a 401 is not retried
    wrong.close()


@pytest.mark.parametrize("kind", ["serve", "http"])
def test_training_scorer_actor_with_served_model_equals_in_process(served, local_models, kind, monkeypatch):
    """`kind: serve` / `kind: http` in a training config: a ScorerGroup (the actors `fgrlhf train`
    uses) scores an object-store rollout through the served model, equal to in-process scores."""
    import ray

    from fgrlhf_ray.actors.scorer import ScorerGroup
    from fgrlhf_ray.config import RewardModelConfig
    from fgrlhf_ray.types import RolloutBatch

    target = f"{APP}/relevance" if kind == "serve" else f"{served.url}#relevance"
    config = RewardModelConfig(name="rel", kind=kind, target=target, density="sub_sentence", num_cpus=0,
                               num_replicas=2, token_env=TOKEN_ENV)
    rollout = RolloutBatch(prompts=list(PROMPTS), prompt_ids=[[1]] * len(PROMPTS), responses=list(RESPONSES),
                           response_ids=[[2]] * len(PROMPTS), logprobs=[[0.0]] * len(PROMPTS),
                           prompt_index=list(range(len(PROMPTS))))
    group = ScorerGroup(config=config, max_restarts=0)
    try:
        got = ray.get(group.score(ray.put(rollout), len(rollout)), timeout=120)
        mean_std = ray.get(group.normalization(), timeout=60)
    finally:
        for actor in group.actors:
            ray.kill(actor)
    local = local_models["relevance"].score(PROMPTS, RESPONSES)
    assert len(got) == len(local)
    for i, (r, l) in enumerate(zip(got, local)):
        assert_same_segments(r.segments, l, where=f"{kind} item {i}")
    assert mean_std == NORMS["relevance"][1:]


def test_fgrlhf_train_two_steps_against_served_models(served, tiny_llama_dir, tmp_path):
    """`fgrlhf train` (the real CLI, a separate driver joining this test's cluster through
    RAY_ADDRESS, as `ray job submit` would) runs 2 PPO steps whose rewards come from the
    served models: relevance through a `serve` scorer (DeploymentHandle, no HTTP) and
    completeness through an `http` scorer (/v1/score with the bearer token)."""
    import json
    import subprocess
    import sys

    import ray

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    config = {
        "seed": 1,
        "policy": {"model_path": str(tiny_llama_dir)},
        "rollout": {"num_engines": 1, "num_cpus_per_engine": 0.5, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 12, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": [
            {"name": "relevance", "kind": "serve", "target": f"{APP}/relevance", "density": "sub_sentence",
             "weight": 0.3, "num_cpus": 0},
            {"name": "completeness", "kind": "http", "target": f"{served.url}#completeness", "density": "sequence",
             "weight": 0.3, "num_cpus": 0, "token_env": TOKEN_ENV},
        ],
        "ppo": {"total_steps": 2, "prompts_per_step": 2, "ppo_epochs": 1, "minibatch_size": 4},
        "learner": {"micro_batch_size": 4, "zero_stage": 0, "num_cpus_per_rank": 0.5},
        "data": {"train_file": str(prompts), "format": "jsonl", "max_prompt_tokens": 64},
        "logging": {"dir": str(tmp_path / "run"), "tensorboard": False},
        "checkpoint": {"every": 0},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, TOKEN_ENV: TOKEN}
    result = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(path)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    rows = [r for r in rows if "reward/total_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # Each served model's rewards reached the trainer: real segments, finite means.
        assert row["reward/relevance/segments"] > 0 and row["reward/completeness/segments"] == 1.0
        assert all(map(lambda k: abs(row[k]) < 1e6, ("reward/relevance/mean", "reward/completeness/mean")))
        assert row["sync/probe_gap"] <= 1e-2
    valid_request_succeeds(httpx.Client(base_url=served.url, timeout=60.0, headers=AUTH))  # the app still serves
