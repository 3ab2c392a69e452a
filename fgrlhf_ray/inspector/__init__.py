"""Reward inspector: every reward model's verdict on every segment, in a browser.

- `page_data` — responses + verdicts → the page's JSON document (pure; unit-tested).
- `render` — the self-contained HTML page (file mode, and the interactive page `fgrlhf serve`
  answers on `GET /inspect`).
- `inputs` — readers for `fgrlhf eval` generations, QA-FEEDBACK files and prompt/response JSONL;
  the reward config (training, eval or serve YAML).
- `scoring` — score items in-process or through a running `fgrlhf serve` (`--url`).
- `cli` — `fgrlhf inspect`; `demo_page.write_demo_inspection` — the demo's `inspect.html`.

Importing this package is cheap: models, torch and HTTP clients load inside the functions
that need them.
"""

from fgrlhf_ray.inspector.demo_page import write_demo_inspection

__all__ = ["write_demo_inspection"]
