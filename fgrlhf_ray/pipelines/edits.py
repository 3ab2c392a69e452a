"""`fgrlhf make-edits`: minimal-edit data collection (paper B's data step).

An editor LLM behind any OpenAI-compatible endpoint (`vllm serve`, a hosted API)
minimally edits the less-preferred (`rejected`) response of each preference pair. The
output is the edit-pair JSONL that `fgrlhf train-rm` reads for the token-level RM
(`fgrlhf_ray.data.rm_data.read_edit_jsonl`)::

    {"prompt": ..., "original": <rejected response>, "edited": <the editor's edit>,
     "meta": {"key": ..., "editor_model": ..., "finish_reason": ..., "diff": {...}}}

`meta.diff` holds the token-diff statistics (difflib opcodes over word tokens, or over an
HF tokenizer's tokens with `--tokenizer`): original / edited token counts, tokens
deleted or replaced in the original, inserted or replaced in the edit, and

    rewrite_fraction = max(changed original tokens / original tokens,
                           changed edited tokens / edited tokens)

An edit is *rejected* (minimal means minimal) when it is empty, equals the original,
or its rewrite_fraction exceeds `--max-rewrite-fraction`; rejected rows go to
`OUT.rejected.jsonl` with their reason, so that they are counted and never asked again.

Resumable: each row has a `key` (a hash of prompt and original); keys already in
`OUT` or `OUT.rejected.jsonl` are skipped. Each row is written by one thread as one
line and flushed at once, so a killed run leaves at most one partial last line, which
the next run truncates before appending: no row is ever written twice.

Transport: at most `--max-concurrency` requests in flight; timeouts, connection
errors, 408 / 429 / 5xx are retried with exponential backoff (`Retry-After`
honoured); 400 / 422 answers and malformed replies fail that row only (counted,
retried by the next run); 401 / 403 / 404 and an editor that stays unreachable stop the
run with a clear error (exit 2) after the rows already finished are written.

The prompt template is a text file with the placeholders `{prompt}` and `{response}`
(required); the default is `fgrlhf_ray/templates/minimal_edit.txt`. With the chat API
(default) the filled template is the single user message; with `--api completions` it
is the raw prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fgrlhf_ray.errors import ConfigError, DataError, FgrlhfError
from fgrlhf_ray.infra.http import RetryPolicy, bearer_headers, http_request, json_body

DEFAULT_TEMPLATE = Path(__file__).parents[1] / "templates" / "minimal_edit.txt"
ROW_FAILURE_STATUSES = frozenset({400, 413, 422})
_WORD = re.compile(r"\w+|[^\w\s]")
_PLACEHOLDER = re.compile(r"\{prompt\}|\{response\}")


class EditorError(FgrlhfError):
    """The editor endpoint cannot be used (unreachable, refuses us, unknown model)."""


class EditRowError(Exception):
    """One row could not be edited (bad request for this row, malformed reply)."""


# --------------------------------------------------------------------------- template


def load_template(path: str | os.PathLike | None) -> str:
    """Read a prompt template; it must contain `{response}` (and may contain `{prompt}`)."""
    p = Path(path) if path else DEFAULT_TEMPLATE
    if not p.is_file():
        raise ConfigError(f"--template: file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--template {p}: cannot read ({exc})") from None
    if "{response}" not in text:
        raise ConfigError(f"--template {p}: the template must contain the placeholder {{response}} "
                          "(and usually {prompt}); see docs/evaluation.md")
    return text


def fill_template(template: str, *, prompt: str, response: str) -> str:
    """Replace the placeholders literally, in one pass: braces elsewhere in the template stay, and a
    `{response}` inside the prompt text is not substituted."""
    values = {"{prompt}": prompt, "{response}": response}
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


# --------------------------------------------------------------------------- diff stats


def word_tokens(text: str) -> list[str]:
    """Words and punctuation marks (tokenizer-free default for the diff statistics)."""
    return _WORD.findall(text)


def diff_stats(original: Sequence, edited: Sequence) -> dict:
    """Token-diff statistics of an edit (see the module docstring for rewrite_fraction)."""
    from fgrlhf_ray.rewards.losses import edit_masks

    om, em = edit_masks(list(original), list(edited))
    deleted, inserted = sum(om), sum(em)
    frac_o = deleted / len(om) if om else (1.0 if em else 0.0)
    frac_e = inserted / len(em) if em else (1.0 if om else 0.0)
    return {
        "original_tokens": len(om),
        "edited_tokens": len(em),
        "deleted_or_replaced": deleted,
        "inserted_or_replaced": inserted,
        "rewrite_fraction": max(frac_o, frac_e),
    }


def judge_edit(original: str, edited: str, *, tokenize: Callable[[str], Sequence], max_rewrite_fraction: float
               ) -> tuple[str | None, dict]:
    """(rejection reason or None, diff stats). Reasons: empty, unchanged, rewrites_too_much."""
    stats = diff_stats(tokenize(original), tokenize(edited))
    if not edited.strip():
        return "empty", stats
    if edited == original:
        return "unchanged", stats
    if stats["rewrite_fraction"] > max_rewrite_fraction:
        return "rewrites_too_much", stats
    return None, stats


# --------------------------------------------------------------------------- editor client


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `…/v1` or `…/v1/` → `http://host:8000` (the API paths are added)."""
    if not re.match(r"^https?://[^/]+", url or ""):
        raise ConfigError(f"--editor-url {url!r}: expected an http(s):// URL such as http://127.0.0.1:8000")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class Edit:
    text: str
    finish_reason: str | None


class OpenAIEditor:
    """Asks an OpenAI-compatible endpoint for one edit per call (thread-safe).

    Args (keyword-only):
        url: base URL of the server (`http://127.0.0.1:8000` or `…/v1`).
        model: served model name.
        template: prompt template text (see `load_template`).
        api: "chat" (`/v1/chat/completions`) or "completions" (`/v1/completions`).
        max_tokens, temperature, seed: generation settings (temperature 0 by default:
            an edit should be deterministic).
        timeout_s, max_retries, backoff_s, max_backoff_s: transport rules.
        max_concurrency: connection-pool size (the caller bounds requests in flight).
        api_key_env: environment variable with a bearer token (unset: none sent).
        transport: an `httpx` transport (unit tests).
    """

    def __init__(self, *, url: str, model: str, template: str, api: str = "chat", max_tokens: int = 256,
                 temperature: float = 0.0, seed: int | None = 0, timeout_s: float = 60.0, max_retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0, max_concurrency: int = 4,
                 api_key_env: str | None = "OPENAI_API_KEY", transport: httpx.BaseTransport | None = None) -> None:
        if api not in ("chat", "completions"):
            raise ConfigError(f"--api must be 'chat' or 'completions', got {api!r}")
        if max_tokens < 1 or max_retries < 0 or timeout_s <= 0 or max_concurrency < 1:
            raise ConfigError("make-edits: need --max-tokens >= 1, --max-retries >= 0, --timeout-s > 0 and "
                              f"--max-concurrency >= 1 (got {max_tokens}, {max_retries}, {timeout_s}, {max_concurrency})")
        self.url = normalize_base_url(url)
        self.model, self.template, self.api = model, template, api
        self.max_tokens, self.temperature, self.seed = int(max_tokens), float(temperature), seed
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.api_key_env = api_key_env
        self.client = httpx.Client(base_url=self.url + "/", headers=bearer_headers(api_key_env), timeout=self.timeout_s,
                                   transport=transport,
                                   limits=httpx.Limits(max_connections=max_concurrency,
                                                       max_keepalive_connections=max_concurrency))
        self._lock = threading.Lock()
        self.attempts = 0  # requests sent, retries included
        self.retries = 0

    def close(self) -> None:
        self.client.close()

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        what = f"editor {method} {self.url}/{path}"

        def send(attempt: int) -> httpx.Response:
            with self._lock:
                self.attempts += 1
                self.retries += attempt > 0
            return self.client.request(method, path, **kwargs)

        def refuse(response: httpx.Response, reason: str) -> Exception:
            if response.status_code in ROW_FAILURE_STATUSES:
                return EditRowError(f"{what} → {response.status_code}: {reason}")
            hint = ""
            if response.status_code in (401, 403):
                hint = f" (set the API key in ${self.api_key_env})" if self.api_key_env else ""
            return EditorError(f"{what} → {response.status_code}: {reason}{hint}")

        response = http_request(send, policy=self.retry_policy, what=what, timeout_s=self.timeout_s,
                                timeout_hint=" (--timeout-s)", refuse=refuse, error=EditorError,
                                hint=". Is the editor server running and reachable (e.g. `vllm serve MODEL --port PORT`)?")
        return json_body(response, what=what, error=EditRowError)

    def check(self) -> list[str]:
        """Fail fast: the server answers `GET /v1/models` and serves `model`. Returns the served names."""
        try:
            listing = self._request("GET", "v1/models")
        except EditRowError as exc:
            raise EditorError(f"{exc} (not an OpenAI-compatible server?)") from None
        try:
            names = [m["id"] for m in listing["data"]]
        except (KeyError, TypeError):
            raise EditorError(f"editor {self.url}/v1/models: unexpected reply {str(listing)[:200]} "
                              "(not an OpenAI-compatible server?)") from None
        if self.model not in names:
            raise ConfigError(f"--model {self.model!r}: the editor at {self.url} serves {', '.join(names) or 'nothing'}")
        return names

    def edit(self, prompt: str, response: str) -> Edit:
        text = fill_template(self.template, prompt=prompt, response=response)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
            reply = self._request("POST", "v1/chat/completions", json=body)
        else:
            body["prompt"] = text
            reply = self._request("POST", "v1/completions", json=body)
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(content, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise EditRowError(f"editor reply has no {'choices[0].message.content' if self.api == 'chat' else 'choices[0].text'}"
                               f": {str(reply)[:200]}") from None
        return Edit(text=content.strip(), finish_reason=choice.get("finish_reason"))


# --------------------------------------------------------------------------- output files


def row_key(prompt: str, original: str) -> str:
    """Stable id of a pair's edit task (input order and other rows do not matter)."""
    return hashlib.sha256(f"{prompt}\x00{original}".encode()).hexdigest()[:24]


def rejected_path(out: Path) -> Path:
    return out.with_name(out.name + ".rejected.jsonl") if out.suffix != ".jsonl" else \
        out.with_name(out.stem + ".rejected.jsonl")


def _repair_tail(path: Path) -> bool:
    """Drop a partial last line (a run killed mid-write). Returns True if one was dropped."""
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with path.open("r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
    return True


def done_keys(path: Path) -> set[str]:
    """Keys already written to `path` (after dropping a partial last line)."""
    keys: set[str] = set()
    if not path.exists():
        return keys
    if not path.is_file():
        raise DataError(f"{path}: exists and is not a file")
    _repair_tail(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                key = json.loads(line)["meta"]["key"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}: line {lineno}: not a make-edits row (no meta.key); it was not written by "
                                "`fgrlhf make-edits` — choose another --out") from None
            if key in keys:
                raise DataError(f"{path}: line {lineno}: key {key} appears twice; the file was edited by hand?")
            keys.add(key)
    return keys


class LineWriter:
    """Appends one JSON object per line, flushed at once (one writer thread only)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------------- the run


@dataclass
class EditTask:
    key: str
    prompt: str
    original: str


def tasks_from_pairs(pairs_path: str) -> list[EditTask]:
    """One task per distinct (prompt, rejected) of a preference-pair JSONL file."""
    from fgrlhf_ray.data.rm_data import read_preference_jsonl

    tasks, seen = [], set()
    for pair in read_preference_jsonl(pairs_path):
        if not pair.rejected.strip():
            continue  # nothing to edit
        key = row_key(pair.prompt, pair.rejected)
        if key not in seen:
            seen.add(key)
            tasks.append(EditTask(key, pair.prompt, pair.rejected))
    if not tasks:
        raise DataError(f"{pairs_path}: no pairs with a non-empty rejected response to edit")
    return tasks


def collect_edits(*, tasks: Sequence[EditTask], editor: OpenAIEditor, out: Path, max_rewrite_fraction: float,
                  tokenize: Callable[[str], Sequence] = word_tokens, max_concurrency: int = 4,
                  progress: bool = True) -> dict:
    """Edit every task not yet in `out` / its rejected file; returns the run's counts.

    At most `max_concurrency` edits are in flight; results are written by this thread
    as they finish. An `EditorError` (or Ctrl-C) stops new submissions, writes what has
    finished, then propagates.
    """
    if not 0.0 < max_rewrite_fraction <= 1.0:
        raise ConfigError(f"--max-rewrite-fraction must be in (0, 1], got {max_rewrite_fraction}")
    rej_path = rejected_path(out)
    already = done_keys(out) | done_keys(rej_path)
    todo = [t for t in tasks if t.key not in already]
    recorder = _EditRecorder(out=out, rejected=rej_path, editor_model=editor.model, tokenize=tokenize,
                             max_rewrite_fraction=max_rewrite_fraction)
    recorder.counts["skipped_done"] = len(tasks) - len(todo)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="make-edits", unit="row", file=sys.stderr, dynamic_ncols=True)
    try:
        fatal = _edit_in_pool(todo, editor=editor, recorder=recorder, max_concurrency=max_concurrency, bar=bar)
    finally:
        recorder.close()
        if bar is not None:
            bar.close()
    counts = recorder.counts
    elapsed = time.perf_counter() - start
    new = counts["accepted"] + counts["rejected"]
    summary = {
        "pairs": len(tasks),
        **{k: counts[k] for k in ("skipped_done", "accepted", "rejected", "failed")},
        "rejected_by_reason": {k[len("rejected_"):]: v for k, v in counts.items() if k.startswith("rejected_")},
        "requests": editor.attempts,
        "retries": editor.retries,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(new / elapsed, 3) if elapsed > 0 else 0.0,
        "out": str(out),
        "rejected_out": str(rej_path),
        "first_errors": recorder.errors,
    }
    if fatal is not None:
        raise type(fatal)(f"{fatal}\n(wrote {new} row(s) before stopping; rerun the same command to resume)") \
            if isinstance(fatal, FgrlhfError) else fatal
    return summary


class _EditRecorder:
    """Judges each finished edit and writes it to the accepted or the rejected file, counting
    outcomes; a row-level failure is counted (first 5 kept) and not written, so a rerun asks
    again. Used from one thread only (the files are appended line by line)."""

    def __init__(self, *, out: Path, rejected: Path, editor_model: str, tokenize: Callable[[str], Sequence],
                 max_rewrite_fraction: float) -> None:
        self.accepted_w, self.rejected_w = LineWriter(out), LineWriter(rejected)
        self.editor_model, self.tokenize, self.max_rewrite_fraction = editor_model, tokenize, max_rewrite_fraction
        self.counts: Counter = Counter()
        self.errors: list[str] = []

    def record(self, task: EditTask, fut: Future) -> None:
        try:
            edit = fut.result()
        except EditRowError as exc:
            self.counts["failed"] += 1
            if len(self.errors) < 5:
                self.errors.append(f"{task.key}: {exc}")
            return
        reason, stats = judge_edit(task.original, edit.text, tokenize=self.tokenize,
                                   max_rewrite_fraction=self.max_rewrite_fraction)
        meta = {"key": task.key, "editor_model": self.editor_model, "finish_reason": edit.finish_reason, "diff": stats}
        row = {"prompt": task.prompt, "original": task.original, "edited": edit.text}
        if reason is None:
            self.accepted_w.write({**row, "meta": meta})
            self.counts["accepted"] += 1
        else:
            self.rejected_w.write({**row, "meta": {**meta, "rejected": reason}})
            self.counts["rejected"] += 1
            self.counts[f"rejected_{reason}"] += 1

    def close(self) -> None:
        self.accepted_w.close()
        self.rejected_w.close()


def _recordable(fut: Future) -> bool:
    """Finished with an edit or with a row-level failure (not an error that stops the run)."""
    exc = fut.exception()
    return exc is None or isinstance(exc, EditRowError)


def _edit_in_pool(todo: Sequence[EditTask], *, editor: OpenAIEditor, recorder: _EditRecorder,
                  max_concurrency: int, bar) -> BaseException | None:
    """Keep at most `max_concurrency` edits in flight and record each as it finishes.

    The first error that is not a row's (`EditorError`, a bug) stops new submissions; the
    edits in flight are still recorded, then it is returned. Ctrl-C records what has
    finished and propagates.
    """
    pending: dict[Future, EditTask] = {}
    fatal: BaseException | None = None
    pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="make-edits")
    try:
        queue = iter(todo)
        while True:
            while fatal is None and len(pending) < max_concurrency:
                task = next(queue, None)
                if task is None:
                    break
                pending[pool.submit(editor.edit, task.prompt, task.original)] = task
            if not pending:
                return fatal
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                if not _recordable(fut):
                    fatal = fatal or fut.exception()  # stop submitting; the rows in flight still get written
                    continue
                recorder.record(task, fut)
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        for fut, task in list(pending.items()):
            if fut.done() and _recordable(fut):
                recorder.record(task, fut)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- CLI


def _make_edits(args: argparse.Namespace) -> int:
    template = load_template(args.template)
    if not 0.0 < args.max_rewrite_fraction <= 1.0:
        raise ConfigError(f"--max-rewrite-fraction must be in (0, 1], got {args.max_rewrite_fraction}")
    if args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    out = Path(args.out)
    if Path(args.pairs).resolve() == out.resolve():
        raise ConfigError("--out must differ from --pairs")
    tasks = tasks_from_pairs(args.pairs)
    tokenize: Callable[[str], Sequence] = word_tokens
    if args.tokenizer:
        from transformers import AutoTokenizer

        if not Path(args.tokenizer).is_dir():
            raise ConfigError(f"--tokenizer: folder not found: {args.tokenizer}")
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    editor = OpenAIEditor(url=args.editor_url, model=args.model, template=template, api=args.api,
                          max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                          timeout_s=args.timeout_s, max_retries=args.max_retries, backoff_s=args.backoff_s,
                          max_concurrency=args.max_concurrency, api_key_env=args.api_key_env)
    try:
        editor.check()
        summary = collect_edits(tasks=tasks, editor=editor, out=out, max_rewrite_fraction=args.max_rewrite_fraction,
                                tokenize=tokenize, max_concurrency=args.max_concurrency,
                                progress=not args.no_progress)
    finally:
        editor.close()
    print(json.dumps(summary))
    print(f"make-edits: {summary['accepted']} accepted, {summary['rejected']} rejected "
          f"{summary['rejected_by_reason'] or ''}, {summary['failed']} failed, {summary['skipped_done']} already done "
          f"({summary['rows_per_s']:.2f} rows/s) → {out}", file=sys.stderr)
    if summary["failed"]:
        print(f"make-edits: {summary['failed']} row(s) failed (first: {summary['first_errors'][:1]}); rerun the same "
              "command to retry them", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-edits",
        help="ask an editor LLM (OpenAI-compatible endpoint) to minimally edit rejected responses (paper B data)",
        description="Writes edit pairs (prompt, original, edited, meta.diff) for token-level RM training; "
                    "resumable, bounded concurrency, retries, rejects edits that rewrite too much.",
    )
    p.add_argument("--pairs", required=True, help="preference-pair JSONL: {prompt, chosen, rejected} per line")
    p.add_argument("--editor-url", required=True, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name of the editor")
    p.add_argument("--out", required=True, help="edit-pair JSONL to write (appended to when resuming)")
    p.add_argument("--template", help=f"prompt template with {{prompt}} and {{response}} (default: {DEFAULT_TEMPLATE.name})")
    p.add_argument("--api", choices=["chat", "completions"], default="chat",
                   help="chat: /v1/chat/completions (default); completions: /v1/completions")
    p.add_argument("--max-rewrite-fraction", type=float, default=0.5,
                   help="reject edits whose rewrite_fraction exceeds this (default 0.5)")
    p.add_argument("--max-concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a retryable failure (default 3)")
    p.add_argument("--backoff-s", type=float, default=0.5, help="first retry delay, doubled each retry (default 0.5)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per-request timeout (default 120)")
    p.add_argument("--max-tokens", type=int, default=256, help="max tokens of an edit (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="editor sampling temperature (default 0)")
    p.add_argument("--seed", type=int, default=0, help="editor sampling seed (default 0)")
    p.add_argument("--tokenizer", help="HF tokenizer folder for the diff statistics (default: word tokens)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable with the API key, sent as a bearer token if set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_make_edits)
