"""Items + scorers → the page document: the one path `fgrlhf inspect` and the demo share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fgrlhf_ray.inspector.page_data import Item, build_page_data, filter_page, word_offsets
from fgrlhf_ray.inspector.scoring import Scorers, policy_token_offsets, score_items


def build_inspection(
    items: Sequence[Item],
    scorers: Scorers | None,
    *,
    tokenizer: str | None = None,
    title: str = "fgrlhf reward inspector",
    notes: Sequence[str] = (),
    filter_expr: str | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score `items` with `scorers` (None: show only the items' labels) and build the page.

    The per-token strip uses `tokenizer` (a policy tokenizer folder) when given, else
    whitespace words. `filter_expr` keeps only the matching responses (`parse_filter`).
    """
    verdicts = score_items(scorers, items, batch_size=batch_size, progress=progress) if scorers else {}
    texts = [i.response for i in items]
    if tokenizer:
        offsets = policy_token_offsets(tokenizer, texts)
        token_source = f"policy tokenizer {tokenizer}"
    else:
        offsets = [word_offsets(t) for t in texts]
        token_source = "whitespace words (no policy tokenizer given)"
    notes = list(notes)
    if scorers is not None:
        notes.insert(0, f"scored {'by ' + scorers.source if scorers.source != 'in-process' else 'in-process'}")
    data = build_page_data(items, verdicts, scorers.models if scorers else [], token_offsets=offsets,
                           token_source=token_source, title=title, notes=notes)
    return filter_page(data, filter_expr) if filter_expr else data
