"""Small rule-based scorers for `kind: function` reward models.

They need no trained model, so a smoke run, a CI test or a new user's first
`fgrlhf train` can exercise the whole distributed loop (several dense scorers at
different densities) before any reward model is trained. They are deliberately simple
proxies, not quality measures:

- `prompt_grounded_sentences` (density `sentence`): per sentence, +1 if most of its
  words occur in the prompt (grounded in the question/passages), else −1.
- `brevity` (density `sequence`): −(number of words)/50, one value per response.
- `every_sentence_fine` (density `sentence`): +1 on every sentence, labelled `no_error` — a
  deliberately *blind* reward model (its reward is a pure sentence-count bonus), for seeing the
  reward diagnostics flag one (docs/reward_diagnostics.md).
"""

from __future__ import annotations

import re

from fgrlhf_ray.data.segments import split_sentences

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def prompt_grounded_sentences(prompts: list[str], responses: list[str]) -> list[list[tuple[int, int, float]]]:
    """Per response, one (char_start, char_end, ±1.0) per sentence."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        vocabulary = set(_words(prompt))
        segments = []
        for start, end in split_sentences(response):
            words = _words(response[start:end])
            grounded = sum(w in vocabulary for w in words)
            segments.append((start, end, 1.0 if words and 2 * grounded > len(words) else -1.0))
        out.append(segments)
    return out


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Per response: −(word count)/50."""
    return [-len(_words(r)) / 50.0 for r in responses]


def every_sentence_fine(prompts: list[str], responses: list[str]) -> list[list[dict]]:
    """Per response, every sentence labelled no_error with value +1 (a blind RM on purpose)."""
    return [[{"char_start": a, "char_end": b, "value": 1.0, "label": "no_error"} for a, b in split_sentences(r)]
            for r in responses]
