"""The reward inspector's HTML: one self-contained file (CSS, JavaScript and data inline).

- `render_page(data)` — the page for `build_page_data`'s document (`fgrlhf inspect`, the demo).
- `render_interactive_page(api_base=...)` — the same page with no data and a form: paste a
  prompt and responses, it calls `GET {api_base}/v1/models` and `POST {api_base}/v1/score` of
  the server that served it (`fgrlhf serve`'s `GET /inspect`). The bearer token is typed into
  the page; the server never puts one in it.
- `content_security_policy(...)` — the policy both pages carry (a `<meta>` tag; the served
  page also sends it as a header): scripts only with the hash of the page's own script, no
  network access at all for the file, only its own origin for the served page, no images,
  frames, forms or plug-ins. So even a string that escaped the escaping could not run code
  or reach the network.

Data sits in `<script type="application/json">`, written by `json_for_script` (no `<`, `>`, `&`
inside), and the script inserts every string as text. Pure (no Ray, no models).
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fgrlhf_ray.inspector.page_data import FORMAT, escape_html, json_for_script

DATA_OPEN = '<script type="application/json" id="fgrlhf-data">'


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    text = resources.files("fgrlhf_ray.inspector").joinpath("assets", name).read_text(encoding="utf-8")
    # Inline in <script> / <style>: these sequences would end or confuse the element early.
    if any(bad in text.lower() for bad in ("</script", "<script", "<!--", "</style")):
        raise RuntimeError(f"inspector asset {name} contains a sequence that cannot be inlined")
    return text


def script_hash() -> str:
    """CSP source expression for the page's script: `'sha256-…'` of its exact text."""
    digest = hashlib.sha256(_asset("inspector.js").encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(*, connect: str = "'none'") -> str:
    """The page's CSP; `connect` is what `fetch` may reach (`'self'` for the served page)."""
    return (f"default-src 'none'; script-src {script_hash()}; style-src 'unsafe-inline'; img-src 'none'; "
            f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _html(data: dict, *, connect: str) -> str:
    title = escape_html(str(data.get("title") or "fgrlhf reward inspector"))
    # `frame-ancestors` is ignored in a <meta> policy (browsers warn); it is sent as a header by the server.
    meta_csp = escape_html(content_security_policy(connect=connect).replace("; frame-ancestors 'none'", ""))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{meta_csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{title}</title>\n"
        f"<style>\n{_asset('inspector.css')}</style>\n"
        "</head>\n<body>\n"
        '<div id="app"><noscript>The reward inspector needs JavaScript.</noscript></div>\n'
        '<div id="tip" hidden></div>\n'
        f"{DATA_OPEN}{json_for_script(data)}</script>\n"
        f"<script>{_asset('inspector.js')}</script>\n"
        "</body>\n</html>\n"
    )


def render_page(data: dict) -> str:
    """The HTML file for a page document from `build_page_data` (works offline, no network)."""
    return _html(data, connect="'none'")


def render_interactive_page(*, api_base: str = "/", title: str = "fgrlhf reward inspector — interactive") -> str:
    """The served page: an empty document in interactive mode that scores pasted text through
    `{api_base}/v1/score` (api_base = the Serve application's route prefix, e.g. `/` or `/rm`)."""
    data = {"format": FORMAT, "mode": "interactive", "api_base": api_base.rstrip("/") or "/", "title": title,
            "models": [], "label_sources": [], "policies": [], "groups": [], "responses": [],
            "token_source": "", "notes": []}
    return _html(data, connect="'self'")


def write_page(path: str | os.PathLike, data: dict) -> Path:
    """Write `render_page(data)` to `path` (via a temporary file and a rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_page_data(path: str | os.PathLike) -> dict:
    """The page document embedded in a file `write_page` wrote (for tests and tools)."""
    import json

    html = Path(path).read_text(encoding="utf-8")
    start = html.index(DATA_OPEN) + len(DATA_OPEN)
    return json.loads(html[start: html.index("</script>", start)])
