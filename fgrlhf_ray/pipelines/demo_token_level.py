"""Paper B in the demo: a token-level reward model from minimal edits of the policy's own answers.

Issue 20. The demo's `samples` stage has the SFT policy answer train / dev / test questions and
the synthetic world's oracle annotate every answer in the QA-FEEDBACK schema, including
``corrected-prediction``: the oracle's *minimal correction* of ``prediction 1`` (it drops the
clauses with an error, fixes a wrongly grounded value, appends the missing facts and keeps
every correct sentence verbatim). Those (answer, correction) pairs are paper B's data:

    edit_pairs_from_feedback   (prediction 1 → corrected-prediction) pairs of a feedback file,
                               with a word-level alignment of what changed (character offsets,
                               Unicode-safe) in each pair's `meta`
    SyntheticEditor            the oracle as a minimal editor: (prompt, response) → correction
    SyntheticEditorServer      that editor behind a small local OpenAI-compatible HTTP server
                               (chat and completions APIs), so that `fgrlhf make-edits` collects
                               the same pairs a user would collect from a real editor LLM
    collect_with_make_edits    make-edits' own client and writer (`collect_edits`) against it
    stage_token_level_rm       the demo stage: pairs (direct and through make-edits), the
                               token-level RM and a sequence-level RM on the same pairs, both
                               judged on held-out pairs of *test* questions beside the trivial
                               prefer-shorter / prefer-longer baselines

The synthetic editor is **not a language model**: it answers from the oracle, which knows the
synthetic world's facts. It stands where a user's editor LLM (`vllm serve`, a hosted API) would
stand; every reply says so (`model` = ``synthetic-oracle-editor``, ``system_fingerprint``, an
``X-Fgrlhf-Editor`` header).

Unchanged answers. When the oracle changes nothing (the answer is already perfect, up to
whitespace and Unicode normalisation) the pair carries no preference, and paper B's loss
(edited tokens minus original tokens over the *changed* tokens) has no term for it. Such answers
are **skipped** (counted as ``skipped_unchanged``) — the same rule as
`fgrlhf_ray.data.qa_feedback.edit_pairs` and as `make-edits`, which rejects an unchanged edit.
`unchanged="keep"` returns them as pairs with ``edited == original`` and ``meta["no_edit"]``
for callers that use "no edit" as evidence (e.g. to measure how often the editor leaves an answer
alone); the token-level RM's trainer ignores them (no changed token), so for the RM both choices
train on the same inputs.

Duplicates. The policy sometimes gives the same answer twice to one question; with
``feedback_on="all"`` each sample is ``prediction 1`` of one row, so the same (prompt, answer)
appears more than once with the same correction. Pairs are de-duplicated on (prompt, original)
(``skipped_duplicate``), as `make-edits` does by its row key.

Alignment. `word_alignment` diffs the two texts over words (runs of letters, digits and
combining marks, any script) and punctuation marks, compared after NFC normalisation, so a name
written with a combining accent in one text and precomposed in the other is not an edit;
offsets are Python string indices (code points) into the *unnormalised* texts, the convention
of every span in this project.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from fgrlhf_ray.data.rm_data import EditPair, write_jsonl
from fgrlhf_ray.errors import DataError

log = logging.getLogger(__name__)

EDITOR_MODEL = "synthetic-oracle-editor"
EDITOR_FINGERPRINT = "fgrlhf-synthetic-oracle-editor"
Unchanged = Literal["skip", "keep"]

# ------------------------------------------------------------------------ alignment


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped: what "unchanged" compares."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words and punctuation marks of `text` (code-point offsets).

    A word is a run of letters, digits, ``_`` and combining marks — so a decomposed "ë"
    (``e`` + U+0308) or a Devanagari vowel sign stays inside its word, which ``\\w+`` would
    split off; any other non-space character is a token of its own, with the combining marks
    that follow it.
    """
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        j = i + 1
        if _is_word_char(ch):
            while j < n and _is_word_char(text[j]):
                j += 1
        else:
            while j < n and unicodedata.category(text[j]).startswith("M"):
                j += 1
        spans.append((i, j))
        i = j
    return spans


def word_alignment(original: str, edited: str) -> dict:
    """Which words an edit deleted / replaced in `original` and inserted / replaced in `edited`.

    difflib opcodes over the two word sequences, words compared NFC-normalised. Returns
    ``{"original_changed": [[start, end], ...], "edited_changed": [...], "original_words": n,
    "edited_words": m, "opcodes": [[tag, i1, i2, j1, j2], ...]}``: changed spans merged per
    opcode block (covering the words of the block and the text between them), word indices in
    the opcodes.
    """
    import difflib

    ow, ew = word_spans(original), word_spans(edited)
    a = [unicodedata.normalize("NFC", original[s:e]) for s, e in ow]
    b = [unicodedata.normalize("NFC", edited[s:e]) for s, e in ew]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    oc, ec, ops = [], [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        ops.append([tag, i1, i2, j1, j2])
        if i2 > i1:
            oc.append([ow[i1][0], ow[i2 - 1][1]])
        if j2 > j1:
            ec.append([ew[j1][0], ew[j2 - 1][1]])
    return {"original_changed": oc, "edited_changed": ec, "original_words": len(a), "edited_words": len(b),
            "opcodes": ops}


# ------------------------------------------------------------------------ edit pairs


def _records(feedback: str | Path | Sequence) -> list:
    """QA-FEEDBACK records of a file path (validated by `load_qa_feedback`) or already loaded."""
    from fgrlhf_ray.data.qa_feedback import load_qa_feedback

    if isinstance(feedback, (str, Path)):
        return load_qa_feedback(feedback)
    return list(feedback)


def edit_pairs_from_feedback(feedback: str | Path | Sequence, *, unchanged: Unchanged = "skip",
                             dedupe: bool = True, stats: dict | None = None) -> list[EditPair]:
    """(``prediction 1`` → ``corrected-prediction``) pairs of a QA-FEEDBACK file or records.

    Rules (module docstring): an empty answer is skipped (nothing to learn from); an answer the
    correction leaves unchanged up to `normalize_text` is skipped or kept (`unchanged`); repeats
    of one (prompt, answer) are dropped when `dedupe`. Each pair's group is its question (so a
    question's pairs stay in one split) and its `meta` holds the feedback row and
    `word_alignment`. `stats` (if given) receives the counts: rows, pairs, skipped_* and
    unchanged_kept.
    """
    if unchanged not in ("skip", "keep"):
        raise ValueError(f"unchanged must be 'skip' or 'keep', got {unchanged!r}")
    counts: Counter = Counter()
    out: list[EditPair] = []
    seen: set[tuple[str, str]] = set()
    for rec in _records(feedback):
        counts["rows"] += 1
        if rec.corrected is None:
            raise DataError(f"{rec.where()}: no feedback.corrected-prediction (needed for edit pairs)")
        original, edited = rec.predictions[0], rec.corrected
        if not original.strip():
            counts["skipped_empty_prediction"] += 1
            continue
        prompt = rec.prompt
        if dedupe and (prompt, original) in seen:
            counts["skipped_duplicate"] += 1
            continue
        seen.add((prompt, original))
        meta: dict[str, Any] = {"row": rec.row}
        if normalize_text(original) == normalize_text(edited):
            if unchanged == "skip":
                counts["skipped_unchanged"] += 1
                continue
            counts["unchanged_kept"] += 1
            out.append(EditPair(prompt, original, original, group=rec.question, meta={**meta, "no_edit": True}))
            continue
        meta["alignment"] = word_alignment(original, edited)
        out.append(EditPair(prompt, original, edited, group=rec.question, meta=meta))
        counts["pairs"] += 1
    if stats is not None:
        stats.update(counts)
    return out


def pair_key(pair: EditPair) -> tuple[str, str, str]:
    return pair.prompt, pair.original, pair.edited


# ------------------------------------------------------------------------ the synthetic editor


class UnknownPrompt(KeyError):
    """The synthetic editor was asked about a question it has no record of."""


class SyntheticEditor:
    """The synthetic world's oracle as a minimal editor (not a language model).

    `edit(prompt, response)` looks the question up by its prompt text (the QA-FEEDBACK prompt,
    ``question: Q context: wikipage: ...``, as `make-edits` sends it) and returns the oracle's
    ``corrected-prediction`` of `response` — for any response to a known question, not only the
    ones in the files.
    """

    def __init__(self, records: Iterable) -> None:
        from fgrlhf_ray.data.synthetic_oracle import Oracle

        self.oracle = Oracle()
        self.by_prompt: dict[str, dict] = {}
        for rec in records:
            self.by_prompt.setdefault(rec.prompt, {"question": rec.question, "passages": rec.passages})
        self.calls = 0

    @classmethod
    def from_feedback_files(cls, paths: Iterable[str | Path]) -> "SyntheticEditor":
        records: list = []
        for p in paths:
            records += _records(p)
        return cls(records)

    def edit(self, prompt: str, response: str) -> str:
        record = self.by_prompt.get(prompt)
        if record is None:
            raise UnknownPrompt(prompt[:120])
        self.calls += 1
        return self.oracle.annotate(record, response)["corrected-prediction"]


def template_pattern(template: str) -> re.Pattern:
    """A regex that takes a filled `make-edits` template apart into ``prompt`` and ``response``.

    Each placeholder must occur exactly once; the first one matches lazily, so a response that
    happens to contain the template's text after ``{prompt}`` still parses.
    """
    for ph in ("{prompt}", "{response}"):
        if template.count(ph) != 1:
            raise ValueError(f"the synthetic editor needs {ph} exactly once in the template "
                             f"(found {template.count(ph)})")
    parts = re.split(r"(\{prompt\}|\{response\})", template)
    regex, first = "", True
    for part in parts:
        if part in ("{prompt}", "{response}"):
            regex += f"(?P<{part[1:-1]}>.*{'?' if first else ''})"
            first = False
        else:
            regex += re.escape(part)
    return re.compile(regex, re.DOTALL)


class SyntheticEditorServer:
    """`SyntheticEditor` behind an OpenAI-compatible HTTP server on loopback (a daemon thread).

    Endpoints: ``GET /v1/models`` (one model, `model`), ``POST /v1/chat/completions`` (the last
    message's content is the filled template) and ``POST /v1/completions`` (``prompt`` is).
    The filled template (`template`: make-edits' default unless given) is taken apart with
    `template_pattern`; an unparseable message or an unknown question is a 400 (make-edits
    counts the row as failed), an unknown model a 404. Use as a context manager::

        with SyntheticEditorServer(SyntheticEditor.from_feedback_files(files)) as server:
            # fgrlhf make-edits --editor-url {server.url} --model synthetic-oracle-editor ...
    """

    def __init__(self, editor: SyntheticEditor, *, host: str = "127.0.0.1", port: int = 0,
                 template: str | None = None, model: str = EDITOR_MODEL) -> None:
        from fgrlhf_ray.pipelines.edits import load_template

        self.editor, self.model = editor, model
        self.pattern = template_pattern(template if template is not None else load_template(None))
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None
        self.requests: Counter = Counter()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SyntheticEditorServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="synthetic-editor", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> "SyntheticEditorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ request handling
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": EDITOR_FINGERPRINT}]}

    def complete(self, path: str, body: Any) -> tuple[int, dict]:
        """(status, JSON reply) of one POST."""
        if not isinstance(body, dict):
            return 400, _error("the request body must be a JSON object")
        if body.get("model") != self.model:
            return 404, _error(f"model {body.get('model')!r} not found; this synthetic editor serves {self.model!r}",
                               "not_found_error")
        chat = path.endswith("/chat/completions")
        if chat:
            messages = body.get("messages")
            if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                    and isinstance(messages[-1].get("content"), str)):
                return 400, _error("messages: expected a list whose last item has a string 'content'")
            text = messages[-1]["content"]
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                return 400, _error("prompt: expected a string")
        m = self.pattern.fullmatch(text)
        if m is None:
            return 400, _error("the message is not the minimal-edit template this synthetic editor was started with")
        try:
            edited = self.editor.edit(m.group("prompt"), m.group("response"))
        except UnknownPrompt as exc:
            return 400, _error(f"the synthetic editor has no record of this question ({exc.args[0]!r}...)")
        self.requests["chat" if chat else "completions"] += 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": edited}
        else:
            choice["text"] = edited
        return 200, {"id": f"synthetic-edit-{sum(self.requests.values())}",
                     "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                     "model": self.model, "system_fingerprint": EDITOR_FINGERPRINT, "choices": [choice],
                     "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind}}


def _handler(server: SyntheticEditorServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Fgrlhf-Editor", "synthetic-oracle (not a language model)")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, server.models())
            else:
                self._send(404, _error(f"no route {self.path}", "not_found_error"))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, _error(f"no route {self.path}", "not_found_error"))
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                self._send(400, _error("the request body is not JSON"))
                return
            self._send(*server.complete(self.path, body))

        def log_message(self, format: str, *args) -> None:  # quiet: make-edits sends thousands
            log.debug("synthetic editor: " + format, *args)

    return Handler


def write_edit_tasks(path: str | Path, feedback: str | Path | Sequence) -> int:
    """The `--pairs` file a user hands `fgrlhf make-edits` to have every ``prediction 1`` edited.

    make-edits edits the ``rejected`` response of each {prompt, chosen, rejected} row; here
    ``rejected`` is the policy's answer and ``chosen`` is left empty (make-edits does not read
    it). Distinct (prompt, answer) rows only; returns how many were written.
    """
    rows, seen = [], set()
    for rec in _records(feedback):
        original = rec.predictions[0]
        if original.strip() and (rec.prompt, original) not in seen:
            seen.add((rec.prompt, original))
            rows.append({"prompt": rec.prompt, "chosen": "", "rejected": original, "group": rec.question})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def collect_with_make_edits(feedback: str | Path | Sequence, out: str | Path, *, url: str,
                            model: str = EDITOR_MODEL, max_rewrite_fraction: float = 1.0,
                            max_concurrency: int = 4) -> dict:
    """Have the editor at `url` edit every distinct ``prediction 1`` with make-edits' own client
    and writer (`OpenAIEditor`, `collect_edits`: what `fgrlhf make-edits` runs); returns its
    summary. `out` is the accepted-pairs JSONL (rejected rows beside it, as make-edits writes)."""
    from fgrlhf_ray.pipelines.edits import EditTask, OpenAIEditor, collect_edits, load_template, row_key

    tasks, seen = [], set()
    for rec in _records(feedback):
        original = rec.predictions[0]
        key = row_key(rec.prompt, original)
        if original.strip() and key not in seen:
            seen.add(key)
            tasks.append(EditTask(key, rec.prompt, original))
    editor = OpenAIEditor(url=url, model=model, template=load_template(None), max_concurrency=max_concurrency,
                          api_key_env=None, max_retries=1)
    try:
        editor.check()
        return collect_edits(tasks=tasks, editor=editor, out=Path(out), max_rewrite_fraction=max_rewrite_fraction,
                             max_concurrency=max_concurrency, progress=False)
    finally:
        editor.close()


def compare_with_direct(direct: Sequence[EditPair], collected: Sequence[EditPair], *,
                        max_rewrite_fraction: float = 0.5) -> dict:
    """How the pairs collected through make-edits relate to the directly built ones.

    ``equal`` when both hold the same (prompt, original, edited) triples; plus how many of the
    direct pairs make-edits' default minimality filter (`judge_edit` at `max_rewrite_fraction`,
    word tokens) would reject as rewriting too much.
    """
    from fgrlhf_ray.pipelines.edits import judge_edit, word_tokens

    a, b = {pair_key(p) for p in direct}, {pair_key(p) for p in collected}
    too_much = sum(judge_edit(p.original, p.edited, tokenize=word_tokens,
                              max_rewrite_fraction=max_rewrite_fraction)[0] == "rewrites_too_much" for p in direct)
    return {"direct": len(a), "make_edits": len(b), "equal": a == b, "only_direct": len(a - b),
            "only_make_edits": len(b - a), "max_rewrite_fraction": max_rewrite_fraction,
            "rejected_as_rewrites_too_much": too_much}


# ------------------------------------------------------------------------ reward models

#: The RMs' settings on top of `rm_config` (MiniLM cut to 3 layers, issue 20's measurements on the
#: demo's policy answers, 765 held-out test pairs, 150 steps): without the passages the token-level
#: RM cannot tell a wrongly grounded value from the right one (most edits replace a value or a
#: clause: edited ≻ original 0.852, changed-token sign 0.701); with them, cut to the BM25-best
#: sentences for the answer inside 128 tokens, 0.995 and 0.905.
TOKEN_SETTINGS = {"lr": 1e-4, "head_lr": 1e-3, "changed_token_loss_weight": 1.0, "use_context": True,
                  "max_length": 128}


def rm_config(task: str, *, name: str, backbone: str, output_dir: Path, train_path: str, dev_path: str,
              steps: int, max_train_examples: int, seed: int, lr: float = 1e-4, head_lr: float | None = 1e-3,
              changed_token_loss_weight: float = 1.0, use_context: bool = False, batch_size: int = 16,
              max_length: int = 320):
    """`RewardModelTrainConfig` of the token-level (task ``token_level``) or sequence-level (task
    ``edit_preference``: edited ≻ original) RM, with the demo's RM settings (`rm_train_config`
    in demo.py: in-process, batch 16, 320 tokens, lr 1e-4 for MiniLM, best dev checkpoint)."""
    from fgrlhf_ray.rewards.train_config import RewardModelTrainConfig

    return RewardModelTrainConfig.model_validate(dict(
        task=task, name=name, backbone=backbone, output_dir=str(output_dir), seed=seed,
        data={"train_path": train_path, "dev_path": dev_path, "format": "jsonl",
              "max_train_examples": max_train_examples},
        max_length=max_length, epochs=100, max_steps=steps, batch_size=batch_size, lr=lr, head_lr=head_lr,
        use_context=use_context, use_ray_train=False, progress_bar=False, keep_checkpoints=1, cpus_per_worker=1,
        **({"changed_token_loss_weight": changed_token_loss_weight} if task == "token_level" else {}),
    ))


def _shuffled(pairs: list[EditPair], seed: int) -> list[EditPair]:
    """The trainer keeps the *first* `max_train_examples`: shuffle so that a cap is a random subset."""
    import random

    out = list(pairs)
    random.Random(f"token_level:{seed}").shuffle(out)
    return out


def evaluate_rms(token_rm_dir: str | None, sequence_rm_dir: str | None, test_pairs: Sequence[EditPair], *,
                 batch_size: int = 32) -> dict:
    """Both RMs on held-out pairs: edited ≻ original by the sum of token rewards (``sum_accuracy``)
    and over the changed tokens only (``pair_accuracy``), the sign of r_t on changed tokens, the
    sequence RM's pairwise accuracy (random pair order), and the length baselines."""
    from fgrlhf_ray.rewards.base import load_reward_model
    from fgrlhf_ray.rewards.evaluation import evaluate

    pairs = [p for p in test_pairs if p.original != p.edited]
    out: dict[str, Any] = {"n_pairs": len(pairs)}
    if token_rm_dir:
        res = evaluate(load_reward_model(token_rm_dir, batch_size=batch_size, device="cpu"), pairs)
        out["token_level"] = {k: res[k] for k in ("n", "sum_accuracy", "pair_accuracy", "changed_token_sign_accuracy",
                                                  "changed_tokens", "mean_margin", "baselines")}
    if sequence_rm_dir:
        res = evaluate(load_reward_model(sequence_rm_dir, batch_size=batch_size, device="cpu"), pairs, seed=0)
        out["sequence"] = {k: res[k] for k in ("n", "accuracy", "baselines", "best_baseline")}
    return out


def token_reward_stats(rm_dir: str, pairs: Sequence[EditPair], *, n: int = 400, batch_size: int = 32) -> dict:
    """Mean and std of the token-level RM's r_t over the policy's answers (the originals of the
    first `n` pairs): PPO's `normalize_mean` / `normalize_std` for this RM, so that at the SFT
    policy a token earns 0 on average and the summed reward does not simply pay for length or
    brevity (the raw r_t need not average 0: the demo's 50-step MiniLM RM gave mean +0.22, std
    1.51 per token on the policy's answers)."""
    import statistics

    from fgrlhf_ray.rewards.base import load_reward_model

    rm = load_reward_model(rm_dir, batch_size=batch_size, device="cpu")
    chosen = list(pairs)[:n]
    values = [v for _, vals in rm.token_rewards([p.prompt for p in chosen], [p.original for p in chosen]) for v in vals]
    if len(values) < 2:
        return {"mean": 0.0, "std": 1.0, "n_tokens": len(values), "n_answers": len(chosen)}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) or 1.0, "n_tokens": len(values),
            "n_answers": len(chosen)}


def stage_token_level_rm(d: Path, *, train_feedback: str, dev_feedback: str, test_feedback: str, backbone: str,
                         steps: int, train_examples: int, seed: int, sequence_steps: int | None = None,
                         num_threads: int | None = 1, via_make_edits: bool = True, train_on: str = "direct",
                         token_settings: dict | None = None) -> dict:
    """The demo stage of issue 20 (a JSON-able result: paths, counts, timings, metrics).

    1. edit pairs (prediction 1 → corrected-prediction) of the train / dev / test feedback files
       → `<d>/pairs/{split}.jsonl` (`edit_pairs_from_feedback`, unchanged answers skipped);
    2. with `via_make_edits`, the same answers edited through `make-edits`' client against the
       synthetic editor server (`<d>/make_edits/{split}.jsonl`), compared with step 1; with
       `train_on="make_edits"` those pairs are what the RMs train on;
    3. the token-level RM (`<d>/token_level`; `steps` optimizer steps, at most `train_examples`
       pairs, `token_settings` overriding `TOKEN_SETTINGS`: lr, head_lr, changed_token_loss_weight,
       use_context, max_length) and the sequence-level RM on the same pairs and inputs (`<d>/sequence`,
       `sequence_steps` or `steps`), the demo's MiniLM `backbone`, best checkpoint by dev pairs;
    4. both judged on the pairs of the test questions (`evaluate_rms`), and the token-level RM's
       r_t statistics on the policy's training answers (`token_reward_stats`: PPO's normalisation).
    """
    import torch

    if train_on not in ("direct", "make_edits"):
        raise ValueError(f"train_on must be 'direct' or 'make_edits', got {train_on!r}")
    if num_threads:
        torch.set_num_threads(num_threads)
    d = Path(d)
    files = {"train": train_feedback, "dev": dev_feedback, "test": test_feedback}
    result: dict[str, Any] = {"pairs": {}, "seconds": {}}
    t0 = time.perf_counter()
    pairs = _write_pairs(d, files, seed=seed, counts=result["pairs"])
    result["seconds"]["pairs"] = time.perf_counter() - t0
    if via_make_edits:
        t0 = time.perf_counter()
        result["make_edits"] = _collect_via_make_edits(d, files, pairs, seed=seed, train_on=train_on)
        result["seconds"]["make_edits"] = time.perf_counter() - t0
    result["train_on"] = train_on
    settings = {**TOKEN_SETTINGS, **(token_settings or {})}
    result["token_settings"] = settings
    token_dir, seq_dir, result["rms"] = _train_token_and_sequence_rms(
        d, backbone=backbone, steps=steps, sequence_steps=sequence_steps or steps, train_examples=train_examples,
        seed=seed, settings=settings)
    t0 = time.perf_counter()
    result["rms"]["token_level"]["normalization"] = token_reward_stats(token_dir, pairs["train"])
    result["quality"] = evaluate_rms(token_dir, seq_dir, pairs["test"])
    result["seconds"]["evaluate"] = time.perf_counter() - t0
    result["target"] = target_check(result["quality"])
    return result


def _write_pairs(d: Path, files: dict[str, str], *, seed: int, counts: dict) -> dict[str, list[EditPair]]:
    """Step 1: the edit pairs of each split → `<d>/pairs/{split}.jsonl` (train shuffled); fills `counts`."""
    pairs: dict[str, list[EditPair]] = {}
    for split, path in files.items():
        stats: dict = {}
        pairs[split] = edit_pairs_from_feedback(path, stats=stats)
        counts[split] = {"file": str(d / "pairs" / f"{split}.jsonl"), **stats}
        write_jsonl(d / "pairs" / f"{split}.jsonl", _shuffled(pairs[split], seed) if split == "train" else pairs[split])
    return pairs


def _collect_via_make_edits(d: Path, files: dict[str, str], pairs: dict[str, list[EditPair]], *, seed: int,
                            train_on: str) -> dict:
    """Step 2: the same answers through make-edits and the synthetic editor server, compared with
    the direct pairs; with `train_on="make_edits"` the collected pairs replace them (in `pairs`
    and on disk)."""
    from fgrlhf_ray.data.rm_data import read_edit_jsonl

    editor = SyntheticEditor.from_feedback_files(files.values())
    out_result: dict[str, Any] = {"editor_model": EDITOR_MODEL, "note": "the synthetic editor is the oracle behind "
                                  "an OpenAI-compatible endpoint, not a language model"}
    with SyntheticEditorServer(editor) as server:
        for split, path in files.items():
            out = d / "make_edits" / f"{split}.jsonl"
            for f in (out, out.with_name(f"{split}.rejected.jsonl")):
                f.unlink(missing_ok=True)
            summary = collect_with_make_edits(path, out, url=server.url)
            collected = read_edit_jsonl(out)
            out_result[split] = {
                "out": str(out), **{k: summary[k] for k in ("pairs", "accepted", "rejected", "rejected_by_reason",
                                                            "failed", "requests", "seconds")},
                "vs_direct": compare_with_direct(pairs[split], collected)}
            if train_on == "make_edits":
                pairs[split] = [EditPair(p.prompt, p.original, p.edited, group=_question_of(p.prompt))
                                for p in collected]
                write_jsonl(d / "pairs" / f"{split}.jsonl",
                            _shuffled(pairs[split], seed) if split == "train" else pairs[split])
    return out_result


def _train_token_and_sequence_rms(d: Path, *, backbone: str, steps: int, sequence_steps: int, train_examples: int,
                                  seed: int, settings: dict) -> tuple[str, str, dict]:
    """Step 3: the token-level and the sequence-level RM on `<d>/pairs`; (token dir, sequence dir, summaries)."""
    from fgrlhf_ray.rewards.training import train_reward_model

    common = dict(backbone=backbone, train_path=str(d / "pairs" / "train.jsonl"),
                  dev_path=str(d / "pairs" / "dev.jsonl"), max_train_examples=train_examples, seed=seed)
    token_cfg = rm_config("token_level", name="token_level", output_dir=d / "token_level", steps=steps,
                          **settings, **common)
    seq_cfg = rm_config("edit_preference", name="sequence", output_dir=d / "sequence", steps=sequence_steps,
                        **{k: v for k, v in settings.items() if k != "changed_token_loss_weight"}, **common)
    rms = {}
    for key, cfg in (("token_level", token_cfg), ("sequence", seq_cfg)):
        summary = train_reward_model(cfg)
        rms[key] = {"path": cfg.output_dir, "task": cfg.task, "kind": "token_level" if key == "token_level"
                    else "sequence_preference", "steps": cfg.max_steps,
                    "train_pairs": summary["split"]["counts"]["train"], "best_dev_metric": summary["best_dev_metric"],
                    "dev_metric_name": summary["dev_metric_name"], "fit_seconds": summary["fit_seconds"]}
        print(f"[token_level] {key} RM: dev {summary['dev_metric_name']} {summary['best_dev_metric']:.3f} "
              f"({summary['fit_seconds']:.0f}s)", flush=True)
    return token_cfg.output_dir, seq_cfg.output_dir, rms


def _question_of(prompt: str) -> str:
    """The question of a QA-FEEDBACK prompt (``question: Q context: ...``): the pairs' group."""
    head = prompt.split(" context: ", 1)[0]
    return head[len("question: "):] if head.startswith("question: ") else head


def target_check(quality: dict, *, target: float = 0.90, margin: float = 0.10) -> dict:
    """Issue 20's target: token-level edited ≻ original (sum of token rewards) ≥ `target` and at
    least `margin` above the best trivial baseline."""
    tl = quality.get("token_level")
    if not tl:
        return {"reached": False, "reason": "no token-level RM evaluated"}
    best = max(tl["baselines"].values())
    ok = tl["sum_accuracy"] >= target and tl["sum_accuracy"] - best >= margin
    return {"reached": ok, "sum_accuracy": tl["sum_accuracy"], "best_baseline": best, "target": target,
            "margin": margin}


# ------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fgrlhf_ray.pipelines.demo_token_level {serve-editor,run} ...``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fgrlhf_ray.pipelines.demo_token_level", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve-editor", help="serve the synthetic (oracle) editor for `fgrlhf make-edits`")
    s.add_argument("--feedback", nargs="+", required=True, help="QA-FEEDBACK files whose questions it knows")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--template", help="the make-edits template the requests are filled from (default: its default)")
    r = sub.add_parser("run", help="the stage on its own: pairs, make-edits, both RMs, quality")
    r.add_argument("--samples", required=True, help="folder with {train,dev,test}_feedback.json (the demo's samples stage)")
    r.add_argument("--backbone", required=True, help="RM encoder folder (the demo's rm/backbone)")
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=150)
    r.add_argument("--sequence-steps", type=int, default=None)
    r.add_argument("--train-examples", type=int, default=4000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-make-edits", action="store_true")
    r.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="RM setting over TOKEN_SETTINGS: lr, head_lr, changed_token_loss_weight, use_context, "
                        "max_length")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "serve-editor":
        from fgrlhf_ray.pipelines.edits import load_template

        server = SyntheticEditorServer(SyntheticEditor.from_feedback_files(args.feedback), port=args.port,
                                       template=load_template(args.template))
        print(f"synthetic editor (the oracle, not an LLM) at {server.url}, model {EDITOR_MODEL!r}; Ctrl-C stops",
              flush=True)
        try:
            server.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.httpd.server_close()
        return 0
    import yaml

    settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}
    samples = Path(args.samples)
    res = stage_token_level_rm(Path(args.out), train_feedback=str(samples / "train_feedback.json"),
                               dev_feedback=str(samples / "dev_feedback.json"),
                               test_feedback=str(samples / "test_feedback.json"), backbone=args.backbone,
                               steps=args.steps, sequence_steps=args.sequence_steps,
                               train_examples=args.train_examples, seed=args.seed,
                               via_make_edits=not args.no_make_edits, token_settings=settings)
    Path(args.out, "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({"quality": res["quality"], "target": res["target"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
