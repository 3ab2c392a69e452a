"""`fgrlhf make-edits` without a server: diff statistics and the rewrite limit by hand,
the template, the OpenAI-compatible client against an httpx mock transport (request
format, retries, row failures, fatal errors), and `collect_edits` — resume, repair of a
partial last line, bounded concurrency, no row written twice. The real `vllm serve` run
is tests/integration/test_make_edits.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from fgrlhf_ray.cli import main
from fgrlhf_ray.data.rm_data import read_edit_jsonl
from fgrlhf_ray.pipelines.edits import (
    DEFAULT_TEMPLATE,
    EditorError,
    EditRowError,
    EditTask,
    OpenAIEditor,
    collect_edits,
    diff_stats,
    done_keys,
    fill_template,
    judge_edit,
    load_template,
    normalize_base_url,
    rejected_path,
    row_key,
    tasks_from_pairs,
    word_tokens,
)
from fgrlhf_ray.errors import ConfigError, DataError

# ------------------------------------------------------------------ diff statistics


def test_diff_stats_by_hand():
    # the cat sat . → the dog sat . : one token replaced on each side.
    s = diff_stats(word_tokens("the cat sat."), word_tokens("the dog sat."))
    assert s == {"original_tokens": 4, "edited_tokens": 4, "deleted_or_replaced": 1, "inserted_or_replaced": 1,
                 "rewrite_fraction": 0.25}
    # deletion only: 2 of 6 original tokens gone, nothing inserted → max(2/6, 0/4)
    s = diff_stats("a b c d e f".split(), "a b e f".split())
    assert (s["deleted_or_replaced"], s["inserted_or_replaced"]) == (2, 0)
    assert s["rewrite_fraction"] == pytest.approx(1 / 3)
    # insertion into a short original: 3 new of 5 edited tokens → 3/5
    assert diff_stats("a b".split(), "a x y z b".split())["rewrite_fraction"] == pytest.approx(3 / 5)
    assert diff_stats([], ["x"])["rewrite_fraction"] == 1.0
    assert diff_stats([], [])["rewrite_fraction"] == 0.0


def test_judge_edit_reasons():
    tok = word_tokens
    assert judge_edit("the cat sat.", "the dog sat.", tokenize=tok, max_rewrite_fraction=0.5)[0] is None
    assert judge_edit("the cat sat.", "  ", tokenize=tok, max_rewrite_fraction=0.5)[0] == "empty"
    assert judge_edit("the cat sat.", "the cat sat.", tokenize=tok, max_rewrite_fraction=0.5)[0] == "unchanged"
    reason, stats = judge_edit("the cat sat.", "a completely new text", tokenize=tok, max_rewrite_fraction=0.5)
    assert reason == "rewrites_too_much" and stats["rewrite_fraction"] == 1.0
    # exactly at the limit is accepted
    assert judge_edit("a b c d", "a b x y", tokenize=str.split, max_rewrite_fraction=0.5)[0] is None


# ------------------------------------------------------------------ template and URL


def test_default_template_and_literal_filling(tmp_path):
    text = load_template(None)
    assert "{prompt}" in text and "{response}" in text and DEFAULT_TEMPLATE.is_file()
    filled = fill_template("Q: {prompt} R: {response} {other} {}", prompt="p {response}", response="r {x}")
    assert filled == "Q: p {response} R: r {x} {other} {}"
    custom = tmp_path / "t.txt"
    custom.write_text("Fix: {response}")
    assert load_template(custom) == "Fix: {response}"
    custom.write_text("no placeholder")
    with pytest.raises(ConfigError, match=r"must contain the placeholder \{response\}"):
        load_template(custom)
    with pytest.raises(ConfigError, match="file not found"):
        load_template(tmp_path / "missing.txt")


def test_fill_template_does_not_substitute_inside_the_prompt():
    # The prompt text may itself contain "{response}": it must stay literal.
    assert fill_template("{prompt} | {response}", prompt="a {response} b", response="R") == "a {response} b | R"


def test_normalize_base_url():
    assert normalize_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert normalize_base_url("https://h/v1") == "https://h"
    with pytest.raises(ConfigError, match="--editor-url"):
        normalize_base_url("127.0.0.1:8000")


# ------------------------------------------------------------------ client over a mock transport


def chat_reply(text: str, finish: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}


def make_editor(handler, **kwargs) -> OpenAIEditor:
    kwargs = {"url": "http://editor.test/v1", "model": "m", "template": "E: {prompt} | {response}",
              "backoff_s": 0.001, **kwargs}
    return OpenAIEditor(transport=httpx.MockTransport(handler), **kwargs)


def test_chat_request_format_and_bearer_token(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=chat_reply("  edited text \n"))

    edit = make_editor(handler, max_tokens=32).edit("the prompt", "the response")
    assert edit.text == "edited text" and edit.finish_reason == "stop"
    req = seen[0]
    assert req.url.path == "/v1/chat/completions" and req.headers["authorization"] == "Bearer sk-test"
    body = json.loads(req.content)
    assert body["model"] == "m" and body["max_tokens"] == 32 and body["temperature"] == 0.0 and body["seed"] == 0
    assert body["messages"] == [{"role": "user", "content": "E: the prompt | the response"}]


def test_completions_api():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/completions"
        assert json.loads(request.content)["prompt"] == "E: p | r"
        return httpx.Response(200, json={"choices": [{"text": " fixed", "finish_reason": "length"}]})

    edit = make_editor(handler, api="completions").edit("p", "r")
    assert (edit.text, edit.finish_reason) == ("fixed", "length")


def test_retries_then_success_and_row_failures():
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json=chat_reply("ok"))

    editor = make_editor(flaky)
    assert editor.edit("p", "r").text == "ok"
    assert (editor.attempts, editor.retries) == (3, 2)

    with pytest.raises(EditRowError, match="400: prompt too long"):
        make_editor(lambda r: httpx.Response(400, json={"error": {"message": "prompt too long"}})).edit("p", "r")
    with pytest.raises(EditRowError, match=r"no choices\[0\]\.message\.content"):
        make_editor(lambda r: httpx.Response(200, json={"choices": []})).edit("p", "r")
    with pytest.raises(EditRowError, match="non-JSON body"):
        make_editor(lambda r: httpx.Response(200, text="<html>")).edit("p", "r")


def test_fatal_errors():
    with pytest.raises(EditorError, match=r"401: bad key \(set the API key in \$OPENAI_API_KEY\)"):
        make_editor(lambda r: httpx.Response(401, json={"error": {"message": "bad key"}})).edit("p", "r")
    with pytest.raises(EditorError, match=r"failed after 3 attempt\(s\): 503"):
        make_editor(lambda r: httpx.Response(503), max_retries=2).edit("p", "r")

    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EditorError, match="Is the editor server running and reachable"):
        make_editor(down, max_retries=1).edit("p", "r")


def test_check_lists_models():
    listing = {"object": "list", "data": [{"id": "m"}, {"id": "other"}]}
    assert make_editor(lambda r: httpx.Response(200, json=listing)).check() == ["m", "other"]
    with pytest.raises(ConfigError, match="--model 'nope': the editor at http://editor.test serves m, other"):
        make_editor(lambda r: httpx.Response(200, json=listing), model="nope").check()
    with pytest.raises(EditorError, match="not an OpenAI-compatible server"):
        make_editor(lambda r: httpx.Response(200, json={"models": []})).check()


# ------------------------------------------------------------------ collect_edits


def tasks(n: int) -> list[EditTask]:
    out = []
    for i in range(n):
        original = f"answer {i} is wrong here ."
        out.append(EditTask(row_key(f"q{i}", original), f"q{i}", original))
    return out


def swap_wrong_for_right(request):
    content = json.loads(request.content)["messages"][0]["content"]
    response = content.split(" | ", 1)[1]
    if "answer 3 " in response:
        return httpx.Response(200, json=chat_reply("totally different words"))  # rewrites too much
    if "answer 4 " in response:
        return httpx.Response(400, json={"error": {"message": "bad row"}})  # fails this row only
    return httpx.Response(200, json=chat_reply(response.replace("wrong", "right")))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_collect_writes_accepted_rejected_and_resumes(tmp_path):
    out = tmp_path / "edits.jsonl"
    ts = tasks(6)
    summary = collect_edits(tasks=ts, editor=make_editor(swap_wrong_for_right), out=out, max_rewrite_fraction=0.5,
                            max_concurrency=3, progress=False)
    assert (summary["accepted"], summary["rejected"], summary["failed"], summary["skipped_done"]) == (4, 1, 1, 0)
    assert summary["rejected_by_reason"] == {"rewrites_too_much": 1}
    rows = read_rows(out)
    assert len(rows) == 4 and {r["meta"]["key"] for r in rows} == {t.key for t in ts[:3] + ts[5:]}
    r0 = next(r for r in rows if r["prompt"] == "q0")
    assert r0["original"] == "answer 0 is wrong here ." and r0["edited"] == "answer 0 is right here ."
    assert r0["meta"]["diff"]["rewrite_fraction"] == pytest.approx(1 / 6)
    assert r0["meta"]["editor_model"] == "m" and r0["meta"]["finish_reason"] == "stop"
    [rej] = read_rows(rejected_path(out))
    assert rej["meta"]["rejected"] == "rewrites_too_much" and rej["prompt"] == "q3"
    # The output is what token-level RM training reads.
    assert len(read_edit_jsonl(out)) == 4

    # Second run: done rows (accepted and rejected) are skipped; only the failed row is asked again.
    asked = []

    def recorder(request):
        asked.append(json.loads(request.content)["messages"][0]["content"])
        return httpx.Response(200, json=chat_reply("answer 4 is right here ."))

    summary = collect_edits(tasks=ts, editor=make_editor(recorder), out=out, max_rewrite_fraction=0.5,
                            progress=False)
    assert summary["skipped_done"] == 5 and summary["accepted"] == 1 and len(asked) == 1 and "answer 4" in asked[0]
    keys = [r["meta"]["key"] for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 5


def test_partial_last_line_is_repaired_and_not_duplicated(tmp_path):
    out = tmp_path / "edits.jsonl"
    ts = tasks(3)
    collect_edits(tasks=ts[:2], editor=make_editor(swap_wrong_for_right), out=out, max_rewrite_fraction=0.5,
                  progress=False)
    with out.open("a") as fh:  # a run killed mid-write leaves half a line
        fh.write('{"prompt": "q2", "original": "answer 2 is wr')
    assert done_keys(out) == {ts[0].key, ts[1].key}
    assert out.read_text().endswith("\n")
    collect_edits(tasks=ts, editor=make_editor(swap_wrong_for_right), out=out, max_rewrite_fraction=0.5,
                  progress=False)
    keys = [r["meta"]["key"] for r in read_rows(out)]
    assert sorted(keys) == sorted(t.key for t in ts)


def test_foreign_or_duplicated_output_is_refused(tmp_path):
    out = tmp_path / "edits.jsonl"
    out.write_text('{"prompt": "q", "original": "a", "edited": "b"}\n')
    with pytest.raises(DataError, match=r"edits\.jsonl: line 1: not a make-edits row"):
        done_keys(out)
    row = json.dumps({"prompt": "q", "original": "a", "edited": "b", "meta": {"key": "k"}})
    out.write_text(row + "\n" + row + "\n")
    with pytest.raises(DataError, match="key k appears twice"):
        done_keys(out)


def test_concurrency_is_bounded(tmp_path):
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return httpx.Response(200, json=chat_reply("answer x is right here ."))

    collect_edits(tasks=tasks(10), editor=make_editor(slow, max_concurrency=8), out=tmp_path / "e.jsonl",
                  max_rewrite_fraction=1.0, max_concurrency=3, progress=False)
    assert state["max"] == 3


def test_fatal_error_stops_after_writing_finished_rows(tmp_path):
    out = tmp_path / "edits.jsonl"
    calls = {"n": 0}
    lock = threading.Lock()

    def dies(request):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n > 2:
            return httpx.Response(404, json={"error": {"message": "model not found"}})
        return httpx.Response(200, json=chat_reply("answer x is right here ."))

    with pytest.raises(EditorError, match=r"404: model not found\n\(wrote 2 row\(s\) before stopping"):
        collect_edits(tasks=tasks(8), editor=make_editor(dies), out=out, max_rewrite_fraction=1.0,
                      max_concurrency=1, progress=False)
    assert len(read_rows(out)) == 2


def test_tasks_from_pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"prompt": "q", "chosen": "good", "rejected": "bad"}\n'
        '{"prompt": "q", "chosen": "better", "rejected": "bad"}\n'  # same (prompt, rejected): one task
        '{"prompt": "q", "chosen": "x", "rejected": "   "}\n'  # nothing to edit
        '{"prompt": "r", "chosen": "good", "rejected": "bad"}\n')
    ts = tasks_from_pairs(str(pairs))
    assert [(t.prompt, t.original) for t in ts] == [("q", "bad"), ("r", "bad")]
    pairs.write_text('{"prompt": "q", "chosen": "good"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl: line 1"):
        tasks_from_pairs(str(pairs))


# ------------------------------------------------------------------ CLI errors


def write_pairs(path: Path, n: int = 2) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good answer", "rejected": f"bad answer {i}"})
                            + "\n" for i in range(n)))
    return path


def test_cli_unreachable_editor_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pairs, out = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "edits.jsonl"
    code = main(["make-edits", "--pairs", str(pairs), "--editor-url", f"http://127.0.0.1:{port}", "--model", "m",
                 "--out", str(out), "--max-retries", "1", "--backoff-s", "0.01", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"error: editor GET http://127.0.0.1:{port}/v1/models failed after 2 attempt(s): ConnectError" in err
    assert "vllm serve" in err
    assert not out.exists() and not rejected_path(out).exists()


@pytest.mark.parametrize("args, message", [
    (["--max-rewrite-fraction", "0"], "--max-rewrite-fraction must be in (0, 1]"),
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
    (["--editor-url", "localhost:8000"], "--editor-url 'localhost:8000': expected an http(s):// URL"),
    (["--template", "/nonexistent/t.txt"], "--template: file not found"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    base = {"--pairs": str(pairs), "--editor-url": "http://127.0.0.1:9", "--model": "m",
            "--out": str(tmp_path / "o.jsonl")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["make-edits", "--no-progress"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_bad_pairs_file(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\nnot json\n')
    assert main(["make-edits", "--pairs", str(bad), "--editor-url", "http://127.0.0.1:9", "--model", "m",
                 "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    assert "pairs.jsonl: line 2: not valid JSON" in capsys.readouterr().err
    assert main(["make-edits", "--pairs", str(tmp_path / "missing.jsonl"), "--editor-url", "http://127.0.0.1:9",
                 "--model", "m", "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
