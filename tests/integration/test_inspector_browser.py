"""The reward inspector in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `make install`) driven by Selenium.

- the file `fgrlhf inspect` writes: every segment of every reward model is in the DOM with
  its label's colour and exactly its characters (an emoji / astral-plane response included);
  toggling a model removes its marks; a response containing `<script>` shows as text and never
  runs; the filter box counts what `page_data.filter_page` counts; side by side per policy;
- thousands of responses: paginated (one page of prompts in the DOM), filterable; times are printed, not asserted;
- `fgrlhf serve`'s `GET /inspect` (a real Ray Serve app on loopback with tiny saved RMs and a
  bearer token): the page asks for the token, scores pasted responses through `/v1/score` and
  shows exactly the server's segments; `fgrlhf inspect --url` gives the same segments.

Screenshots are test artefacts, written under `$FGRLHF_TEST_ARTIFACTS/inspector/` (default
`outputs/test-artifacts/inspector/`); the test prints their paths. A missing browser fails the
test: it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fgrlhf_ray.cli import main as cli_main
from fgrlhf_ray.inspector.page_data import filter_page
from fgrlhf_ray.inspector.render import read_page_data
from fgrlhf_ray.infra.ports import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("FGRLHF_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts")) / "inspector"

ERROR_RGB, OK_RGB = "rgb(214, 39, 40)", "rgb(44, 160, 44)"
LABEL_RGB = {"Irrelevant": "rgb(255, 127, 14)", "Redundant": "rgb(255, 127, 14)", "Incoherent": "rgb(255, 127, 14)",
             "Wrong-Grounding": "rgb(148, 103, 189)", "Unverifiable": "rgb(148, 103, 189)"}
EVIL = ('Ignore this. <script>window.__fgrlhf_pwned = 1;</script> </script><img src=x '
        'onerror="window.__fgrlhf_pwned = 2"> & "quoted" <b>bold?</b>')
UNICODE_TAIL = " Café 🙂 naïve 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, über."

ORACLE_RMS = [
    {"name": "relevance", "kind": "function", "target": "fgrlhf_ray.data.oracle_scorers:relevance",
     "density": "sub_sentence", "weight": 0.3},
    {"name": "factuality", "kind": "function", "target": "fgrlhf_ray.data.oracle_scorers:factuality",
     "density": "sentence", "weight": 0.5},
    {"name": "words", "kind": "function", "target": "fgrlhf_ray.serve.testing:word_count_reward",
     "density": "sequence", "weight": 0.1},
]


# ------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the browser test needs headless Chromium: {', '.join(missing)} not found. `make install` "
                    "installs Debian's packages (apt-get install -y chromium chromium-driver)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: it is in the `dev` extra (make install)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout=30.0, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1", what="page ready")
    driver.get_log("browser")  # start each page with an empty console log


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"\n[inspector test] screenshot: {path}")
    assert path.stat().st_size > 10_000
    return path


DOM_MARKS = """
const out = {};
for (const card of document.querySelectorAll('.card[data-response]')) {
  const rid = card.dataset.response, lanes = {};
  for (const el of card.querySelectorAll('.ln')) {
    const lane = el.dataset.lane, seg = el.dataset.seg;
    lanes[lane] = lanes[lane] || {};
    const m = getComputedStyle(el).backgroundImage.match(/rgba?\\([^)]*\\)/);
    const s = lanes[lane][seg] || (lanes[lane][seg] = {label: el.dataset.label, color: m ? m[0] : null, text: ''});
    s.text += el.textContent;
  }
  out[rid] = lanes;
}
return out;
"""


def page_data(path: Path) -> dict:
    return read_page_data(path)


def expected_color(lane: str, mark: list, label_lanes) -> str | None:
    if lane in label_lanes:
        return LABEL_RGB.get(mark[2], "rgb(140, 86, 75)")
    if mark[2] == "error":
        return ERROR_RGB
    if mark[2] == "no_error":
        return OK_RGB
    return None  # scalar values: a shade of red / green (checked by sign below)


def check_marks_in_dom(dom: dict, responses: list[dict], lanes: list[str], label_lanes=()) -> int:
    """Every mark of every lane is in the DOM with its label, colour and exactly its characters."""
    n = 0
    for r in responses:
        chars = list(r["text"])  # code points, as the page slices them
        shown = dom[str(r["id"])]
        for lane in lanes:
            marks = r["labels"].get(lane) if lane in label_lanes else r["marks"].get(lane)
            if marks is None:
                assert lane not in shown
                continue
            drawn = {k: m for k, m in enumerate(marks) if not m[0] == m[1] == 0}
            assert sorted(map(int, shown.get(lane, {}))) == sorted(drawn), (r["id"], lane)
            for k, m in drawn.items():
                seg = shown[lane][str(k)]
                assert seg["label"] == (m[2] or ""), (r["id"], lane, k)
                a = m[1] - 1 if m[0] == m[1] else m[0]
                assert seg["text"] == "".join(chars[a:m[1]]), (r["id"], lane, k)
                color = expected_color(lane, m, label_lanes)
                if color is not None:
                    assert seg["color"] == color, (r["id"], lane, k, seg)
                else:  # sign of the weighted value: red-ish below zero, green-ish above
                    rgb = [int(x) for x in re.findall(r"\d+", seg["color"])[:3]]
                    assert rgb == ([44, 160, 44] if (m[5] or 0) > 0 else [214, 39, 40]), seg
                n += 1
    return n


def toggle(driver, lane: str) -> None:
    driver.find_element("css selector", f'label.lane-toggle[data-lane="{lane}"] input').click()


def paste(driver, element_id: str, text: str) -> None:
    """Put `text` into a form field as a paste would (value + `input` event). ChromeDriver's
    `send_keys` types only characters of the Basic Multilingual Plane, and the responses hold emoji."""
    driver.execute_script("const el = document.getElementById(arguments[0]); el.value = arguments[1]; "
                          "el.dispatchEvent(new Event('input', {bubbles: true}));", element_id, text)


def count_matches(driver) -> int:
    return int(driver.find_element("id", "count").get_attribute("data-matches"))


def set_filter(driver, expr: str, expected: int | None = None) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "filter")
    # Select-all + delete, not `clear()`: clearing sets the value without an `input` event, so an
    # emptied box would never reach the page's filter.
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(expr)
    if expected is not None:
        wait(driver, lambda d: count_matches(d) == expected, 10, f"filter {expr!r} → {expected} matches")


# -------------------------------------------------------------- file mode


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    assert cli_main(["data", "synth", "--out", str(out), "--n", "1000", "--seed", "3"]) == 0
    return out


def test_generated_file_shows_every_segment_and_never_runs_model_text(browser, synthetic, tmp_path):
    from fgrlhf_ray.data.qa_feedback import format_qa_prompt
    from fgrlhf_ray.data.synthetic_oracle import Oracle

    records = json.loads((synthetic / "test_feedback.json").read_text())[:6]
    oracle = Oracle()
    files = []
    for policy, pick in (("sft", lambda r: r["prediction 1"]), ("fine_grained", lambda r: r["gold"])):
        rows = []
        for k, r in enumerate(records):
            response = pick(r) + (UNICODE_TAIL if k == 1 else "")
            if policy == "sft" and k == 2:
                response = EVIL
            rows.append({"prompt": format_qa_prompt(r["question"], r["passages"]), "response": response,
                         "sample": 0, "feedback": oracle.annotate(r, response)})
        path = tmp_path / f"{policy}.generations.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        files.append(str(path))
    config = tmp_path / "rewards.yaml"
    config.write_text(yaml.safe_dump({"reward_models": ORACLE_RMS}))
    out = tmp_path / "inspect.html"
    assert cli_main(["inspect", "--data", files[0], "--data", files[1], "--reward-config", str(config),
                     "--out", str(out)]) == 0
    data = page_data(out)
    assert len(data["responses"]) == 12 and data["label_sources"] == ["labels"]

    open_page(browser, out.resolve().as_uri())
    # Model text ran nowhere: no flag, only the page's own two script elements, no image.
    assert browser.execute_script("return window.__fgrlhf_pwned") is None
    assert browser.execute_script("return document.scripts.length") == 2
    assert browser.execute_script("return document.images.length") == 0
    evil_card = browser.find_element("css selector", '.card[data-policy="sft"][data-response="2"] .text')
    assert evil_card.text.replace("\n", " ") == EVIL

    # Side by side: one column per policy in every group.
    groups = browser.find_elements("css selector", ".group")
    assert len(groups) == 6 and all(len(g.find_elements("css selector", ".col")) == 2 for g in groups)

    # Every segment of every lane, with its colour and exactly its characters (the emoji case too).
    lanes = ["relevance", "factuality", "words", "labels"]
    n_marks = check_marks_in_dom(browser.execute_script(DOM_MARKS), data["responses"], lanes, label_lanes={"labels"})
    assert n_marks == sum(len(r["marks"][m]) for r in data["responses"] for m in ("relevance", "factuality", "words")) \
        + sum(len(r["labels"]["labels"]) for r in data["responses"])
    strips = browser.find_elements("css selector", '.card[data-response="1"] .strip .tk')
    assert len(strips) == data["responses"][1]["metrics"]["tokens"]

    # Hover shows the model, label, probability / raw / weighted values.
    from selenium.webdriver import ActionChains

    piece = browser.find_element("css selector", '.card[data-response="0"] .ln[data-lane="factuality"]')
    ActionChains(browser).move_to_element(piece).perform()
    wait(browser, lambda d: d.find_element("id", "tip").is_displayed(), 5, "tooltip")
    tip = browser.find_element("id", "tip").text
    assert "factuality (sentence)" in tip and "raw" in tip and "weighted" in tip
    screenshot(browser, "inspect_file.png")

    # Toggling a model hides all its marks (and its totals row); the other lanes stay.
    toggle(browser, "relevance")
    wait(browser, lambda d: not d.find_elements("css selector", '.ln[data-lane="relevance"]'), 5, "relevance hidden")
    assert browser.find_elements("css selector", '.ln[data-lane="factuality"]')
    assert not browser.find_elements("css selector", 'table.totals tr[data-lane="relevance"]')
    toggle(browser, "relevance")
    wait(browser, lambda d: d.find_elements("css selector", '.ln[data-lane="relevance"]'), 5, "relevance back")

    # The filter box counts what the Python filter counts.
    for expr in ("factuality.flagged >= 1", "labels.flagged >= 2 or words.weighted > 0.15", "total < 0 and words > 8"):
        set_filter(browser, expr, len(filter_page(data, expr)["responses"]))
    set_filter(browser, "factualty.flagged >= 1")
    wait(browser, lambda d: "unknown reward model" in d.find_element("id", "filter-error").text, 5, "filter error")
    set_filter(browser, "", len(data["responses"]))
    assert console_errors(browser) == []


def test_thousands_of_responses_are_paginated(browser, synthetic, tmp_path):
    config = tmp_path / "rewards.yaml"
    config.write_text(yaml.safe_dump({"reward_models": ORACLE_RMS[:1]}))
    out = tmp_path / "big.html"
    t0 = time.perf_counter()
    assert cli_main(["inspect", "--data", str(synthetic / "train_feedback.json"), "--reward-config", str(config),
                     "--out", str(out)]) == 0
    build_s = time.perf_counter() - t0
    data = page_data(out)
    assert len(data["responses"]) == 3200  # 800 questions × 4 predictions
    t0 = time.perf_counter()
    open_page(browser, out.resolve().as_uri())
    load_s = time.perf_counter() - t0
    assert len(browser.find_elements("css selector", ".group")) == 20  # one page of prompts, not 800
    assert browser.find_element("id", "page-no").text == "page 1 / 40"
    expr = "relevance.flagged >= 2 and human.flagged >= 2"
    t0 = time.perf_counter()
    set_filter(browser, expr, len(filter_page(data, expr)["responses"]))
    filter_s = time.perf_counter() - t0
    browser.find_element("id", "last-page").click()
    wait(browser, lambda d: d.find_element("id", "page-no").text.startswith("page ") and
         d.find_element("id", "next-page").get_attribute("disabled") is not None, 5, "last page")
    print(f"\n[inspector test] 3200 responses: build {build_s:.1f} s, load {load_s:.2f} s, filter {filter_s:.2f} s, "
          f"{out.stat().st_size / 1e6:.1f} MB")  # measured, not asserted: timings belong in benchmarks
    assert console_errors(browser) == []


# ---------------------------------------------------------- served page


APP = "fgrlhf-inspect-test"
TOKEN_ENV = "FGRLHF_TEST_INSPECT_TOKEN"
TOKEN = "inspect-token-93ab"
PROMPT = "question: who led the british in the battle of princeton? answer:"
RESPONSES = [
    "General Cornwallis led them, and the British lost the battle of Princeton in 1777. Washington advanced!",
    EVIL + UNICODE_TAIL,
]



@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    from fgrlhf_ray.serve import testing as faults

    root = tmp_path_factory.mktemp("serve")
    paths = faults.build_tiny_reward_models(root / "rms")
    port = free_port()
    config = {
        "port": port, "app_name": APP, "token_env": TOKEN_ENV, "require_token": True,
        "tokenizer": str(root / "rms" / "backbone"),
        "reward_models": [
            {"name": "relevance", "kind": "segment_classifier", "path": paths["relevance"], "density": "sub_sentence",
             "weight": 0.3, "num_cpus": 0.5},
            {"name": "completeness", "kind": "sequence_preference", "path": paths["completeness"],
             "density": "sequence", "weight": 0.3, "num_cpus": 0.5},
            {"name": "token_level", "kind": "token_level", "path": paths["token_level"], "density": "token",
             "weight": 0.5, "num_cpus": 0.5},
        ],
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN
    try:
        assert cli_main(["serve", "--config", str(path), "--no-block"]) == 0
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous


def direct_scores(url: str) -> dict:
    with httpx.Client(base_url=url, timeout=60.0, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        reply = c.post("/v1/score", json={"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES],
                                          "return_total": True, "return_token_rewards": True})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_served_inspect_page_scores_pasted_responses(browser, served):
    page = httpx.get(f"{served}/inspect", timeout=30.0)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
    assert TOKEN not in page.text and TOKEN_ENV not in page.text  # the token is asked for, never embedded
    reply = direct_scores(served)

    open_page(browser, f"{served}/inspect")
    paste(browser, "prompt-in", PROMPT)
    paste(browser, "responses-in", RESPONSES[0] + "\n---\n" + RESPONSES[1])
    browser.find_element("id", "names-in").send_keys("sft, ppo")
    browser.find_element("id", "token").send_keys("wrong-token")
    browser.find_element("id", "score-btn").click()
    wait(browser, lambda d: "401" in d.find_element("id", "form-error").text, 30, "401 shown")
    assert "bearer token" in browser.find_element("id", "form-error").text
    token_box = browser.find_element("id", "token")
    token_box.clear()
    token_box.send_keys(TOKEN)
    browser.find_element("id", "score-btn").click()
    wait(browser, lambda d: len(d.find_elements("css selector", ".card[data-response]")) == 2, 60, "two cards")

    assert browser.execute_script("return window.__fgrlhf_pwned") is None
    assert browser.execute_script("return document.scripts.length") == 2
    assert browser.execute_script("return document.images.length") == 0
    assert "null" not in browser.find_element("id", "legend").text  # no label lanes: no label entries
    assert browser.find_element("css selector", '.card[data-response="1"] .text').text.replace("\n", " ") \
        == RESPONSES[1]
    assert len(browser.find_elements("css selector", ".group .col")) == 2  # sft | ppo side by side

    # The DOM holds exactly the server's segments, coloured by label.
    responses = []
    for i, result in enumerate(reply["results"]):
        marks = {name: [[s["char_start"], s["char_end"], s["label"], s["probability"], s["value"],
                         w * (s["value"] - mu) / sigma] for s in score["segments"]]
                 for name, score in result["scores"].items()
                 for w, mu, sigma in [_norm(served, name)]}
        responses.append({"id": i, "text": RESPONSES[i], "marks": marks, "labels": {}})
    lanes = ["relevance", "completeness", "token_level"]
    dom = browser.execute_script(DOM_MARKS)
    assert check_marks_in_dom(dom, responses, lanes) > 10
    labels = {s["label"] for r in reply["results"] for s in r["scores"]["relevance"]["segments"]}
    assert labels <= {"error", "no_error"}
    for i, result in enumerate(reply["results"]):
        assert len(browser.find_elements("css selector", f'.strip[data-response="{i}"] .tk')) == \
            len(result["token_offsets"])
        total = browser.find_element("css selector", f'.card[data-response="{i}"] .total').text
        assert total == f"total {result['weighted_total']:+.3f}".replace("+-", "-")
    screenshot(browser, "inspect_served.png")

    toggle(browser, "relevance")
    wait(browser, lambda d: not d.find_elements("css selector", '.ln[data-lane="relevance"]'), 5, "relevance hidden")
    assert browser.find_elements("css selector", '.ln[data-lane="token_level"]')
    assert console_errors(browser) == [] or all("401" in e for e in console_errors(browser))


_NORMS: dict = {}


def _norm(url: str, name: str) -> tuple[float, float, float]:
    if not _NORMS:
        with httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            for m in c.get("/v1/models").json()["models"]:
                _NORMS[m["name"]] = (m["weight"], m["normalization"]["mean"], m["normalization"]["std"])
    return _NORMS[name]


def test_inspect_cli_against_the_server_shows_the_servers_segments(served, tmp_path, monkeypatch):
    data_file = tmp_path / "pasted.jsonl"
    data_file.write_text("".join(json.dumps({"prompt": PROMPT, "response": r, "policy": p}) + "\n"
                                 for p, r in zip(("sft", "ppo"), RESPONSES)))
    monkeypatch.setenv("INSPECT_TEST_TOKEN", TOKEN)
    out = tmp_path / "remote.html"
    assert cli_main(["inspect", "--data", str(data_file), "--url", served, "--token-env", "INSPECT_TEST_TOKEN",
                     "--out", str(out)]) == 0
    data = page_data(out)
    reply = direct_scores(served)
    for r, result in zip(data["responses"], reply["results"]):
        for name, score in result["scores"].items():
            got = [(m[0], m[1], m[2]) for m in r["marks"][name]]
            assert got == sorted((s["char_start"], s["char_end"], s["label"]) for s in score["segments"])
            assert r["stats"][name]["weighted"] == pytest.approx(score["weighted_total"], abs=1e-4)
        assert r["metrics"]["total"] == pytest.approx(result["weighted_total"], abs=1e-4)
    assert [m["name"] for m in data["models"]] == ["relevance", "completeness", "token_level"]
    monkeypatch.delenv("INSPECT_TEST_TOKEN")
    assert cli_main(["inspect", "--data", str(data_file), "--url", served, "--token-env", "INSPECT_TEST_TOKEN",
                     "--out", str(out)]) == 2
