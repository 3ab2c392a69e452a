"""`/v1/score` request parsing: every kind of bad input → the right 4xx, code and field."""

from __future__ import annotations

import json

import pytest

from fgrlhf_ray.serve.schema import (
    RequestError,
    ScoreRequest,
    check_body_size,
    check_content_type,
    parse_score_request,
)

LIMITS = dict(max_body_bytes=4096, max_items=3, max_chars=50, max_token_offsets=8, known_models=["relevance", "completeness"])


def parse(body, **overrides):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_score_request(raw, **{**LIMITS, **overrides})


def refused(body, **overrides) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(body, **overrides)
    return info.value


ITEM = {"prompt": "question: who? answer:", "response": "General Cornwallis."}


def test_valid_list_and_single_object():
    many = parse({"items": [ITEM, ITEM], "models": ["completeness"], "return_total": True})
    assert isinstance(many, ScoreRequest) and len(many.items) == 2 and many.models == ["completeness"]
    assert many.return_total and not many.return_token_rewards
    one = parse({"items": ITEM})
    assert len(one.items) == 1 and one.items[0].response == "General Cornwallis." and one.models is None


@pytest.mark.parametrize(
    "body, status, code, field",
    [
        (b'{"items": [', 400, "invalid_json", None),
        (b"\xff\xfe{}", 400, "invalid_utf8", None),
        (b'{"items": [{"prompt": "a", "response": "caf\xc3"}]}', 400, "invalid_utf8", None),
        (b'{"items": [{"prompt": "a", "response": "\\ud800"}]}', 400, "invalid_json", None),  # lone surrogate
        (b"   ", 400, "empty_body", None),
        (b"[1, 2]", 422, "validation_error", None),
        ({"items": [{"prompt": "a"}]}, 422, "validation_error", "items.0.response"),
        ({"items": [{"prompt": "a", "response": "b", "score": 1}]}, 422, "validation_error", "items.0.score"),
        ({"items": [ITEM], "temperature": 1}, 422, "validation_error", "temperature"),
        ({"items": [{"prompt": 3, "response": "b"}]}, 422, "validation_error", "items.0.prompt"),
        ({"items": [ITEM], "return_total": "yes"}, 422, "validation_error", "return_total"),
        ({"items": "abc"}, 422, "validation_error", "items"),
        ({"items": []}, 422, "validation_error", "items"),
        ({"items": [{"prompt": "a", "response": ""}]}, 422, "validation_error", "items.0.response"),
        ({"items": [{"prompt": "", "response": "b"}]}, 422, "validation_error", "items.0.prompt"),
        ({"items": [ITEM] * 4}, 413, "too_many_items", "items"),
        ({"items": [{"prompt": "a", "response": "x" * 51}]}, 422, "validation_error", "items.0.response"),
        ({"items": [ITEM], "models": ["relevance", "helpfulness"]}, 422, "validation_error", "models.1"),
        ({"items": [ITEM], "models": ["relevance", "relevance"]}, 422, "validation_error", "models.1"),
        ({"items": [ITEM], "models": []}, 422, "validation_error", "models"),
        ({"items": [ITEM], "return_token_rewards": True}, 422, "validation_error", "items.0.token_offsets"),
        ({"items": [{**ITEM, "token_offsets": [[0, 5], [5, 99]]}], "return_token_rewards": True}, 422,
         "validation_error", "items.0.token_offsets.1"),
        ({"items": [{**ITEM, "token_offsets": [[0, 1, 2]]}]}, 422, "validation_error", "items.0.token_offsets.0"),
        ({"items": [{**ITEM, "token_offsets": [[0, 1.5]]}]}, 422, "validation_error", "items.0.token_offsets.0.1"),
        ({"items": [{**ITEM, "token_offsets": [[2, 2], [3, 3]]}]}, 422, "validation_error", "items.0.token_offsets"),
        ({"items": [{**ITEM, "token_offsets": [[0, 1]] * 9}]}, 422, "validation_error", "items.0.token_offsets"),
    ],
)
def test_bad_input_status_code_and_field(body, status, code, field):
    err = refused(body)
    assert (err.status, err.body.error, err.body.field) == (status, code, field)
    assert err.body.reason
    if field:
        assert field in err.body.reason  # the human-readable reason names the field


def test_every_problem_is_listed_and_messages_are_specific():
    err = refused({"items": [{"prompt": "", "response": 3, "extra": 1}], "x": 1})
    fields = {p.field for p in err.body.problems}
    assert fields == {"items.0.prompt", "items.0.response", "items.0.extra", "x"}
    by_field = {p.field: p.problem for p in err.body.problems}
    assert "unknown field (allowed: prompt, response, token_offsets)" in by_field["items.0.extra"]
    assert "allowed: items, models, return_token_rewards, return_total" in by_field["x"]
    assert "(and 3 more problems)" in err.body.reason
    unknown = refused({"items": [ITEM], "models": ["helpfulness"]})
    assert "unknown reward model 'helpfulness'; served: relevance, completeness" in unknown.body.reason


def test_body_size_limits():
    big = json.dumps({"items": [{"prompt": "a", "response": "x" * 5000}]}).encode()
    err = refused(big)
    assert err.status == 413 and err.body.error == "body_too_large" and "max_body_bytes" in err.body.reason
    with pytest.raises(RequestError) as info:
        check_body_size("5000", 4096)
    assert info.value.status == 413
    with pytest.raises(RequestError) as info:
        check_body_size("lots", 4096)
    assert info.value.status == 400
    check_body_size(None, 4096)
    check_body_size("4096", 4096)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_content_types_accepted(content_type):
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(RequestError) as info:
        check_content_type(content_type)
    assert info.value.status == 415 and info.value.body.error == "unsupported_media_type"


def test_token_offsets_accepted_and_server_tokenizer_makes_them_optional():
    req = parse({"items": [{**ITEM, "token_offsets": [[0, 7], [7, 19], [19, 19]]}], "return_token_rewards": True})
    assert req.items[0].token_offsets == [[0, 7], [7, 19], [19, 19]]
    assert parse({"items": [ITEM], "return_token_rewards": True}, server_tokenizer=True).return_token_rewards
