/* fgrlhf reward inspector (no dependencies). Reads the page data (format fgrlhf-inspect/1, see
 * fgrlhf_ray/inspector/page_data.py) from the JSON block #fgrlhf-data and renders it.
 * Safety: every string from the data is inserted with createTextNode / textContent, never as
 * markup, so a response containing a script tag shows as text and never runs.
 * Offsets are code points: texts are sliced as Array.from(text). */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("fgrlhf-data").textContent);
  const INTERACTIVE = DATA.mode === "interactive";

  // ------------------------------------------------------------------ colours
  const ERROR = "#d62728", OK = "#2ca02c";
  const LABEL_FAMILY = { Irrelevant: "#ff7f0e", Redundant: "#ff7f0e", Incoherent: "#ff7f0e",
                         "Wrong-Grounding": "#9467bd", Unverifiable: "#9467bd" };
  const PALETTE = ["#1f77b4", "#17becf", "#bcbd22", "#e377c2", "#8c564b", "#7f7f7f"];
  const NEG = [214, 39, 40], POS = [44, 160, 44];
  const LANE_GAP = 5, LINE = 3;

  function hashColor(s) {
    let h = 0;
    for (const ch of s) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }
  function rgba(c, a) { return "rgba(" + c[0] + ", " + c[1] + ", " + c[2] + ", " + a.toFixed(3) + ")"; }
  function markColor(lane, mark) {
    if (lane.kind === "labels") return LABEL_FAMILY[mark[2]] || "#8c564b";
    const label = mark[2];
    if (label === "error") return ERROR;
    if (label === "no_error") return OK;
    if (label !== null && label !== undefined) return hashColor(label);
    const w = mark[5] === null ? 0 : mark[5];
    const scale = laneScale[lane.name] || 1;
    const a = 0.35 + 0.65 * Math.min(1, Math.abs(w) / scale);
    return rgba(w > 0 ? POS : NEG, a);
  }

  // --------------------------------------------------------------- utilities
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
        else if (k === "style") Object.assign(el.style, v);
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "text") el.textContent = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return el;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const d = digits === undefined ? 3 : digits;
    const s = Math.abs(x) < 1e-12 ? (0).toFixed(d) : x.toFixed(d);
    return x > 0 ? "+" + s : s;
  }
  function plain(x, digits) { return x === null || x === undefined ? "–" : x.toFixed(digits === undefined ? 3 : digits); }
  function clip(s, n) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  // -------------------------------------------------------------------- lanes
  let lanes = [];          // [{name, kind: "rm"|"labels", density, weight, mean, std}]
  const enabled = {};      // lane name -> bool
  let laneScale = {};      // lane name -> max |weighted| (colour intensity of scalar marks)
  let stripScale = 1;      // max |token value| over the page

  function setupLanes() {
    lanes = DATA.models.map(m => Object.assign({ kind: "rm" }, m))
      .concat(DATA.label_sources.map(name => ({ name: name, kind: "labels", density: "labels" })));
    for (const l of lanes) if (!(l.name in enabled)) enabled[l.name] = true;
    laneScale = {};
    stripScale = 1e-9;
    for (const r of DATA.responses) {
      for (const [name, marks] of Object.entries(r.marks)) {
        for (const m of marks) if (m[5] !== null) laneScale[name] = Math.max(laneScale[name] || 1e-9, Math.abs(m[5]));
      }
      if (r.strip) for (const c of r.strip) stripScale = Math.max(stripScale, Math.abs(c[2]));
    }
  }
  function laneMarks(r, lane) { return (lane.kind === "labels" ? r.labels[lane.name] : r.marks[lane.name]) || null; }

  // ----------------------------------------------------------------- filters
  // The same language as fgrlhf_ray.inspector.page_data.parse_filter.
  const LANE_METRICS = ["segments", "flagged", "share", "raw", "weighted", "missing"];
  const RESPONSE_METRICS = ["total", "words", "chars", "tokens"];
  const OPS = { ">=": "ge", "\u2265": "ge", "<=": "le", "\u2264": "le", ">": "gt", "<": "lt", "==": "eq", "=": "eq", "!=": "ne" };
  const TOKEN = /\s*(?:([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(>=|<=|==|!=|>|<|\u2265|\u2264|=)|([A-Za-z_][\w.-]*)|(\S))/y;

  function parseFilter(expr) {
    expr = expr.trim();
    if (!expr) return null;
    const names = lanes.map(l => l.name);
    const toks = [];
    TOKEN.lastIndex = 0;
    while (TOKEN.lastIndex < expr.length) {
      const at = TOKEN.lastIndex;
      const m = TOKEN.exec(expr);
      if (!m) break;
      const pos = at + m[0].length - (m[1] || m[2] || m[3] || m[4]).length + 1;
      if (m[4] !== undefined) throw new Error("filter: unexpected '" + m[4] + "' at character " + pos);
      toks.push(m[1] !== undefined ? ["num", m[1], pos] : m[2] !== undefined ? ["op", m[2], pos] : ["name", m[3], pos]);
    }
    const alts = [];
    let conj = [];
    let k = 0;
    for (;;) {
      if (k >= toks.length) throw new Error("filter: expected a condition like `factuality.flagged >= 2` at the end");
      const [kind, text, at] = toks[k];
      if (kind !== "name") throw new Error("filter: expected a name like `factuality.flagged` or `total` at character " + at + ", got '" + text + "'");
      let lane = null, metric;
      if (text.indexOf(".") < 0) {
        if (RESPONSE_METRICS.indexOf(text) >= 0) metric = text;
        else if (names.indexOf(text) >= 0) { lane = text; metric = "flagged"; }
        else throw new Error("filter: unknown name '" + text + "' at character " + at + "; use `<lane>.<metric>` with a lane in " + (names.join(", ") || "(none)") + " or one of " + RESPONSE_METRICS.join(", "));
      } else {
        const cut = text.lastIndexOf(".");
        lane = text.slice(0, cut); metric = text.slice(cut + 1);
        if (names.indexOf(lane) < 0) throw new Error("filter: unknown reward model or label source '" + lane + "' at character " + at + " (known: " + (names.join(", ") || "none") + ")");
        if (LANE_METRICS.indexOf(metric) < 0) throw new Error("filter: unknown metric '" + metric + "' of '" + lane + "' at character " + at + " (known: " + LANE_METRICS.join(", ") + ")");
      }
      if (k + 1 >= toks.length || toks[k + 1][0] !== "op") throw new Error("filter: expected a comparison (>=, <=, >, <, ==, !=) after '" + text + "', got " + (k + 1 < toks.length ? "'" + toks[k + 1][1] + "'" : "the end"));
      if (k + 2 >= toks.length || toks[k + 2][0] !== "num") throw new Error("filter: expected a number after " + text + " " + toks[k + 1][1] + ", got " + (k + 2 < toks.length ? "'" + toks[k + 2][1] + "'" : "the end"));
      conj.push({ lane: lane, metric: metric, op: OPS[toks[k + 1][1]], value: parseFloat(toks[k + 2][1]) });
      k += 3;
      if (k === toks.length) { alts.push(conj); return alts; }
      const word = toks[k][0] === "name" ? toks[k][1].toLowerCase() : "";
      if (word === "and") k += 1;
      else if (word === "or") { alts.push(conj); conj = []; k += 1; }
      else throw new Error("filter: expected `and` or `or` at character " + toks[k][2] + ", got '" + toks[k][1] + "'");
    }
  }
  function holds(c, r) {
    const src = c.lane === null ? r.metrics : r.stats[c.lane];
    if (!src || typeof src !== "object") return false;
    const x = src[c.metric];
    if (x === undefined || x === null) return false;
    switch (c.op) {
      case "ge": return x >= c.value; case "le": return x <= c.value;
      case "gt": return x > c.value; case "lt": return x < c.value;
      case "eq": return Math.abs(x - c.value) <= 1e-9; default: return Math.abs(x - c.value) > 1e-9;
    }
  }
  function filterMatches(flt, r) { return !flt || flt.some(conj => conj.every(c => holds(c, r))); }

  // -------------------------------------------------------------------- state
  const state = {
    filter: null, filterText: "", search: "", policy: "*", page: 0, pageSize: 20,
    view: null, sort: "input", strip: true, onlyHits: false,
  };

  function responseMatches(r) {
    if (state.policy !== "*" && r.policy !== state.policy) return false;
    if (!filterMatches(state.filter, r)) return false;
    if (state.search) {
      const q = state.search.toLowerCase();
      const g = DATA.groups[r.group];
      if (r.text.toLowerCase().indexOf(q) < 0 && g.prompt.toLowerCase().indexOf(q) < 0) return false;
    }
    return true;
  }

  function visibleGroups() {
    const out = [];
    DATA.groups.forEach((g, gid) => {
      const rs = g.responses.map(i => DATA.responses[i]).filter(r => state.policy === "*" || r.policy === state.policy);
      const hits = rs.filter(responseMatches);
      if (hits.length) out.push({ gid: gid, group: g, shown: rs, hits: new Set(hits.map(r => r.id)) });
    });
    const totals = v => v.shown.filter(r => v.hits.has(r.id)).map(r => r.metrics.total);
    if (state.sort === "total-asc") out.sort((a, b) => Math.min(...totals(a)) - Math.min(...totals(b)));
    else if (state.sort === "total-desc") out.sort((a, b) => Math.max(...totals(b)) - Math.max(...totals(a)));
    else if (state.sort === "gap") {
      const gap = v => { const t = v.shown.map(r => r.metrics.total); return Math.max(...t) - Math.min(...t); };
      out.sort((a, b) => gap(b) - gap(a));
    }
    return out;
  }

  // ------------------------------------------------------------------- header
  const app = document.getElementById("app");
  const tip = document.getElementById("tip");
  let resultsEl, summaryEl, countEl, pagerEl, filterErrEl, laneBox, policySel, legendEl;

  function headerMeta() {
    const nR = DATA.responses.length, nG = DATA.groups.length;
    const models = DATA.models.map(m => m.name + " (" + m.density + ", w=" + m.weight + ")").join(", ") || "none";
    return nR + " response" + (nR === 1 ? "" : "s") + " to " + nG + " prompt" + (nG === 1 ? "" : "s") +
      " · policies: " + (DATA.policies.join(", ") || "–") + " · reward models: " + models +
      (DATA.label_sources.length ? " · labels: " + DATA.label_sources.join(", ") : "") +
      (DATA.token_source ? " · strip tokens: " + DATA.token_source : "");
  }

  let metaEl;
  function build() {
    app.textContent = "";
    metaEl = h("div", { class: "meta", id: "meta" }, headerMeta());
    app.appendChild(h("header", { class: "top" }, h("h1", { text: DATA.title }), metaEl,
      DATA.notes && DATA.notes.length ? h("div", { class: "notes" }, DATA.notes.join(" · ")) : null));
    if (INTERACTIVE) app.appendChild(buildForm());
    laneBox = h("span", { class: "lane-toggles", id: "lanes" });
    filterErrEl = h("span", { class: "filter-error", id: "filter-error" });
    const filterIn = h("input", { type: "text", id: "filter", placeholder: "filter, e.g. factuality.flagged >= 2",
      spellcheck: "false", title: "<lane>.<metric> OP number, joined with and / or. Metrics: " + LANE_METRICS.join(", ") +
      "; bare: " + RESPONSE_METRICS.join(", ") });
    let timer = null;
    filterIn.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        try {
          state.filter = parseFilter(filterIn.value);
          state.filterText = filterIn.value;
          filterIn.classList.remove("bad");
          filterErrEl.textContent = "";
        } catch (e) {
          filterIn.classList.add("bad");
          filterErrEl.textContent = e.message;
          return;
        }
        state.page = 0;
        renderResults();
      }, 120);
    });
    const search = h("input", { type: "search", id: "search", placeholder: "search text" });
    search.addEventListener("input", () => { state.search = search.value; state.page = 0; renderResults(); });
    policySel = h("select", { id: "policy" });
    policySel.addEventListener("change", () => { state.policy = policySel.value; state.page = 0; renderResults(); });
    const viewSel = h("select", { id: "view" }, h("option", { value: "side" }, "side by side"), h("option", { value: "stack" }, "stacked"));
    viewSel.addEventListener("change", () => { state.view = viewSel.value; renderResults(); });
    const sortSel = h("select", { id: "sort" }, h("option", { value: "input" }, "input order"),
      h("option", { value: "total-asc" }, "total reward ↑"), h("option", { value: "total-desc" }, "total reward ↓"),
      h("option", { value: "gap" }, "largest gap between answers"));
    sortSel.addEventListener("change", () => { state.sort = sortSel.value; state.page = 0; renderResults(); });
    const sizeSel = h("select", { id: "page-size" }, [10, 20, 50, 100].map(n => h("option", { value: n, selected: n === state.pageSize }, String(n))));
    sizeSel.addEventListener("change", () => { state.pageSize = parseInt(sizeSel.value, 10); state.page = 0; renderResults(); });
    const hitsBox = h("input", { type: "checkbox", id: "only-matches", checked: state.onlyHits });
    hitsBox.addEventListener("change", () => { state.onlyHits = hitsBox.checked; renderResults(); });
    const stripBox = h("input", { type: "checkbox", id: "show-strip", checked: state.strip });
    stripBox.addEventListener("change", () => { state.strip = stripBox.checked; renderResults(); });
    pagerEl = h("span", { class: "pager", id: "pager" });
    countEl = h("span", { id: "count" });
    app.appendChild(h("div", { class: "controls" },
      laneBox,
      h("span", null, filterIn, " ", filterErrEl),
      search,
      h("label", null, "policy ", policySel),
      h("label", null, "view ", viewSel),
      h("label", null, "sort ", sortSel),
      h("label", { title: "hide the other answers to a prompt when one matches" }, hitsBox, " only matches"),
      h("label", null, stripBox, " token strip"),
      h("label", null, "per page ", sizeSel),
      pagerEl, countEl));
    legendEl = h("div", { class: "legend", id: "legend" });
    app.appendChild(legendEl);
    summaryEl = h("div", { class: "summary", id: "summary" });
    app.appendChild(summaryEl);
    resultsEl = h("main", { id: "results" });
    resultsEl.addEventListener("mouseover", onHover);
    resultsEl.addEventListener("mouseout", onLeave);
    app.appendChild(resultsEl);
    refreshChrome();
  }

  function refreshChrome() {
    if (metaEl) metaEl.textContent = headerMeta();
    laneBox.textContent = "";
    lanes.forEach((lane, k) => {
      const box = h("input", { type: "checkbox", checked: enabled[lane.name], data: { lane: lane.name } });
      const chip = h("label", { class: "lane-toggle" + (enabled[lane.name] ? "" : " off"), data: { lane: lane.name },
        title: lane.kind === "labels" ? "reference labels (" + lane.name + ")" :
          lane.name + ": " + lane.density + ", weight " + lane.weight + ", normalisation μ=" + lane.mean + " σ=" + lane.std },
        box, h("span", null, lane.name), h("span", { class: "lane-no" }, lane.kind === "labels" ? "labels" : lane.density));
      box.addEventListener("change", () => {
        enabled[lane.name] = box.checked;
        chip.classList.toggle("off", !box.checked);
        renderResults();
      });
      laneBox.appendChild(chip);
    });
    const keep = state.policy;
    policySel.textContent = "";
    policySel.appendChild(h("option", { value: "*" }, "all"));
    for (const p of DATA.policies) policySel.appendChild(h("option", { value: p }, p));
    policySel.value = DATA.policies.indexOf(keep) >= 0 ? keep : "*";
    state.policy = policySel.value;
    if (state.view === null && DATA.policies.length) {
      state.view = DATA.policies.length > 1 ? "side" : "stack";
      document.getElementById("view").value = state.view;
    }
    legendEl.textContent = "";
    const sw = (c, dashed) => h("span", { class: "sw", style: { background: dashed ?
      "repeating-linear-gradient(90deg, " + c + " 0px, " + c + " 5px, transparent 5px, transparent 8px)" : c } });
    // Native `append` would write a null as the text "null": drop the absent entries first.
    legendEl.append(...[
      h("span", null, sw(ERROR), "error"), h("span", null, sw(OK), "no error"),
      h("span", null, sw(rgba(NEG, 1)), "negative value"), h("span", null, sw(rgba(POS, 1)), "positive value"),
      DATA.label_sources.length ? h("span", null, sw("#ff7f0e", true), "labelled relevance error") : null,
      DATA.label_sources.length ? h("span", null, sw("#9467bd", true), "labelled factuality error") : null,
      h("span", null, "underlines stack in lane order (first lane nearest the text); a gap ends a segment; " +
        "the strip shows the summed weighted reward per token (scale ±" + plain(stripScale, 2) + ")")].filter(Boolean));
  }

  // ------------------------------------------------------------------ results
  function renderResults() {
    const groups = visibleGroups();
    const pages = Math.max(1, Math.ceil(groups.length / state.pageSize));
    if (state.page >= pages) state.page = pages - 1;
    const slice = groups.slice(state.page * state.pageSize, (state.page + 1) * state.pageSize);
    const nHits = groups.reduce((n, v) => n + v.hits.size, 0);
    countEl.textContent = nHits + " of " + DATA.responses.length + " responses match · " + groups.length + " prompt" +
      (groups.length === 1 ? "" : "s");
    countEl.dataset.matches = String(nHits);
    countEl.dataset.groups = String(groups.length);
    pagerEl.textContent = "";
    const go = p => () => { state.page = p; renderResults(); window.scrollTo(0, 0); };
    pagerEl.append(
      h("button", { type: "button", id: "first-page", disabled: state.page === 0, onclick: go(0) }, "«"),
      h("button", { type: "button", id: "prev-page", disabled: state.page === 0, onclick: go(state.page - 1) }, "‹"),
      h("span", { id: "page-no" }, "page " + (state.page + 1) + " / " + pages),
      h("button", { type: "button", id: "next-page", disabled: state.page >= pages - 1, onclick: go(state.page + 1) }, "›"),
      h("button", { type: "button", id: "last-page", disabled: state.page >= pages - 1, onclick: go(pages - 1) }, "»"));
    renderSummary(groups);
    resultsEl.textContent = "";
    if (!slice.length) {
      resultsEl.appendChild(h("div", { class: "empty-page" },
        DATA.responses.length ? "No response matches." : (INTERACTIVE ? "Paste a prompt and responses above and press Score." : "No responses.")));
    }
    const policies = state.policy === "*" ? DATA.policies : [state.policy];
    for (const v of slice) resultsEl.appendChild(renderGroup(v, policies));
    document.body.dataset.ready = "1";
  }

  function renderSummary(groups) {
    summaryEl.textContent = "";
    const hits = [];
    for (const v of groups) for (const r of v.shown) if (v.hits.has(r.id)) hits.push(r);
    if (!hits.length || !lanes.length) return;
    const on = lanes.filter(l => enabled[l.name]);
    const head = h("tr", null, h("th", null, "policy"), h("th", null, "responses"), h("th", null, "mean total"),
      on.map(l => h("th", { title: l.kind === "labels" ? "error spans per response" : "mean weighted reward · flagged share" },
        l.name)));
    const rows = [];
    const pol = state.policy === "*" ? DATA.policies : [state.policy];
    for (const p of pol) {
      const rs = hits.filter(r => r.policy === p);
      if (!rs.length) continue;
      const mean = f => rs.reduce((s, r) => s + f(r), 0) / rs.length;
      rows.push(h("tr", { data: { policy: p } }, h("td", null, p), h("td", null, String(rs.length)),
        h("td", null, fmt(mean(r => r.metrics.total))),
        on.map(l => {
          const have = rs.filter(r => r.stats[l.name]);
          if (!have.length) return h("td", null, "–");
          if (l.kind === "labels") return h("td", null, plain(have.reduce((s, r) => s + r.stats[l.name].flagged, 0) / have.length, 2));
          const segs = have.reduce((s, r) => s + r.stats[l.name].segments, 0);
          const flagged = have.reduce((s, r) => s + r.stats[l.name].flagged, 0);
          return h("td", null, fmt(have.reduce((s, r) => s + r.stats[l.name].weighted, 0) / have.length) + " · " +
            (segs ? Math.round(100 * flagged / segs) + "% flagged" : "–"));
        })));
    }
    summaryEl.appendChild(h("table", null, h("caption", null, "Over the " + hits.length + " matching responses"), head, rows));
  }

  function renderGroup(v, policies) {
    const g = v.group;
    if (state.onlyHits) v = Object.assign({}, v, { shown: v.shown.filter(r => v.hits.has(r.id)) });
    const firstLine = g.prompt.split("\n")[0];
    const prompt = h("details", { class: "prompt" }, h("summary", null, clip(firstLine, 220)),
      h("div", { class: "full" }, g.prompt));
    const side = state.view === "side" && policies.length > 1;
    const cols = h("div", { class: "cols", style: { gridTemplateColumns: side ? "repeat(" + policies.length + ", minmax(0, 1fr))" : "minmax(0, 1fr)" } });
    if (side) {
      for (const p of policies) {
        const rs = v.shown.filter(r => r.policy === p);
        cols.appendChild(h("div", { class: "col", data: { policy: p } }, h("div", { class: "col-head" }, p),
          rs.length ? rs.map(r => renderCard(r, v.hits.has(r.id))) : h("div", { class: "card missing" }, "no answer from " + p)));
      }
    } else {
      cols.appendChild(h("div", { class: "col" }, v.shown.map(r => renderCard(r, v.hits.has(r.id)))));
    }
    return h("section", { class: "group", data: { group: v.gid } }, prompt, cols);
  }

  function renderCard(r, hit) {
    const total = r.metrics.total;
    const head = h("div", { class: "card-head" },
      h("span", { class: "policy" }, r.policy),
      h("span", null, "sample " + r.sample),
      DATA.models.length ? h("span", { class: "total " + (total < 0 ? "neg" : total > 0 ? "pos" : ""), title: "Σ weighted reward over the reward models" },
        "total " + fmt(total)) : null,
      h("span", null, r.metrics.words + " words"),
      r.source ? h("span", { class: "src" }, r.source) : null);
    const card = h("div", { class: "card" + (hit ? "" : " nomatch"), data: { response: r.id, policy: r.policy } },
      head, renderText(r));
    if (state.strip && r.strip && r.strip.length) card.appendChild(renderStrip(r));
    card.appendChild(renderTotals(r));
    const missing = Object.entries(r.missing || {}).filter(([src]) => enabled[src]);
    for (const [src, list] of missing) {
      card.appendChild(h("div", { class: "missing-info" }, src + ": missing " + list.length + " fact" +
        (list.length === 1 ? "" : "s") + " (" + list.join(", ") + ")"));
    }
    return card;
  }

  // Cut the text at every boundary of every enabled lane's segments (and of the strip's
  // tokens); each piece is wrapped in one underline span per row that covers it. A lane whose
  // segments overlap (two labels on one clause) gets one row per overlapping layer.
  function drawnRange(m) { return m[0] === m[1] ? [m[1] - 1, m[1]] : [m[0], m[1]]; }  // empty: on its reward's character

  function renderText(r) {
    const chars = Array.from(r.text);
    const n = chars.length;
    const box = h("div", { class: "text" });
    if (!n) { box.appendChild(h("span", { class: "empty" }, "(empty response)")); return box; }
    const rows = [];
    for (const lane of lanes) {
      if (!enabled[lane.name]) continue;
      const marks = laneMarks(r, lane);
      if (!marks) continue;
      const tracks = [];
      marks.forEach((m, k) => {
        const [a, b] = drawnRange(m);
        if (b <= 0) return;  // an empty segment at 0 holds no character
        let t = tracks.findIndex(tr => tr.end <= a);
        if (t < 0) { tracks.push({ end: 0, idx: [] }); t = tracks.length - 1; }
        tracks[t].end = b;
        tracks[t].idx.push(k);
      });
      if (!tracks.length) tracks.push({ end: 0, idx: [] });
      for (const tr of tracks) rows.push({ lane: lane, marks: marks, idx: tr.idx });
    }
    box.style.lineHeight = (22 + (LANE_GAP + 1) * rows.length) + "px";
    const cuts = new Set([0, n]);
    const cover = rows.map(row => {
      const at = new Int32Array(n).fill(-1);
      for (const k of row.idx) {
        const [a, b] = drawnRange(row.marks[k]);
        for (let c = a; c < b && c < n; c++) at[c] = k;
        cuts.add(a); cuts.add(Math.min(b, n));
      }
      return at;
    });
    const tokAt = new Int32Array(n).fill(-1);
    if (r.strip && state.strip) {
      r.strip.forEach((c, t) => {
        for (let i = c[0]; i < c[1] && i < n; i++) tokAt[i] = t;
        cuts.add(Math.min(c[0], n)); cuts.add(Math.min(c[1], n));
      });
    }
    const bounds = Array.from(cuts).sort((x, y) => x - y);
    for (let j = 0; j + 1 < bounds.length; j++) {
      const a = bounds[j], b = bounds[j + 1];
      if (a >= b) continue;
      let node = h("span", { class: "pc", data: { a: a, b: b, tok: tokAt[a] } }, chars.slice(a, b).join(""));
      for (let ri = rows.length - 1; ri >= 0; ri--) {
        const k = cover[ri][a];
        if (k < 0) continue;
        const lane = rows[ri].lane, m = rows[ri].marks[k];
        const end = drawnRange(m)[1];
        const color = markColor(lane, m);
        const img = lane.kind === "labels"
          ? "repeating-linear-gradient(90deg, " + color + " 0px, " + color + " 5px, transparent 5px, transparent 8px)"
          : "linear-gradient(" + color + ", " + color + ")";
        node = h("span", { class: "ln", data: { lane: lane.name, seg: k, label: m[2] === null ? "" : m[2] },
          style: { backgroundImage: img, backgroundSize: (b >= end ? "calc(100% - 3px) " : "100% ") + LINE + "px",
                   paddingBottom: (2 + LANE_GAP * ri) + "px" } }, node);
      }
      box.appendChild(node);
    }
    return box;
  }

  function renderStrip(r) {
    const strip = h("div", { class: "strip", data: { response: r.id } });
    r.strip.forEach((c, t) => {
      const v = c[2];
      const hgt = Math.min(50, 50 * Math.abs(v) / stripScale);
      const bar = v === 0 ? null : h("span", { class: "bar", style: {
        background: v > 0 ? rgba(POS, 0.9) : rgba(NEG, 0.9), height: Math.max(hgt, 4) + "%",
        bottom: v > 0 ? "50%" : null, top: v < 0 ? "50%" : null } });
      strip.appendChild(h("span", { class: "tk", data: { t: t, value: v } }, bar));
    });
    return strip;
  }

  function renderTotals(r) {
    const on = lanes.filter(l => enabled[l.name] && r.stats[l.name]);
    const table = h("table", { class: "totals" });
    if (!on.length) return table;
    table.appendChild(h("tr", null, h("th", null, ""), h("th", null, "segments"), h("th", null, "flagged"),
      h("th", null, "raw Σ"), h("th", null, "weighted Σ")));
    for (const l of on) {
      const s = r.stats[l.name];
      table.appendChild(h("tr", { data: { lane: l.name } }, h("td", null, l.name), h("td", null, String(s.segments)),
        h("td", null, String(s.flagged)),
        h("td", null, l.kind === "labels" ? "–" : plain(s.raw)),
        h("td", null, l.kind === "labels" ? (s.missing ? s.missing + " missing" : "–") : fmt(s.weighted))));
    }
    return table;
  }

  // ------------------------------------------------------------------ tooltip
  let lit = [];
  function light(els) { for (const e of lit) e.classList.remove("hl"); lit = Array.from(els); for (const e of lit) e.classList.add("hl"); }
  function findResponse(el) { const card = el.closest(".card"); return card ? DATA.responses[parseInt(card.dataset.response, 10)] : null; }

  function onHover(ev) {
    const pc = ev.target.closest(".pc");
    const tk = ev.target.closest(".tk");
    if (!pc && !tk) return;
    const r = findResponse(ev.target);
    if (!r) return;
    const chars = Array.from(r.text);
    tip.textContent = "";
    if (pc) {
      light([]);
      const a = parseInt(pc.dataset.a, 10);
      const t = parseInt(pc.dataset.tok, 10);
      let any = false;
      for (const lane of lanes) {
        if (!enabled[lane.name]) continue;
        const marks = laneMarks(r, lane);
        if (!marks) continue;
        marks.forEach(m => {
          const [lo, hi] = drawnRange(m);
          if (!(lo <= a && a < hi)) return;
          any = true;
          const quote = clip(chars.slice(m[0], m[1]).join(""), 90);
          if (lane.kind === "labels") {
            tip.appendChild(h("div", { class: "row" }, h("span", { class: "dot", style: { background: markColor(lane, m) } }),
              h("span", { class: "name" }, lane.name), " · " + m[2] + (m[3] ? " — " + m[3] : "") + " · chars " + m[0] + "–" + m[1]));
          } else {
            tip.appendChild(h("div", { class: "row" }, h("span", { class: "dot", style: { background: markColor(lane, m) } }),
              h("span", { class: "name" }, lane.name), " (" + lane.density + ") · " + (m[2] === null ? "no label" : m[2]) +
              (m[3] === null ? "" : " · p=" + plain(m[3])) + " · raw " + plain(m[4]) + " · weighted " + fmt(m[5]) +
              " · chars " + m[0] + "–" + m[1]));
          }
          tip.appendChild(h("div", { class: "quote" }, "“" + quote + "”"));
        });
      }
      if (r.strip && state.strip && t >= 0) {
        const c = r.strip[t];
        tip.appendChild(h("div", { class: "row" }, "token " + t + " → " + fmt(c[2])));
        light(document.querySelectorAll('.strip[data-response="' + r.id + '"] .tk[data-t="' + t + '"]'));
        pc.classList.add("hl"); lit.push(pc);
      }
      if (!any && !(r.strip && t >= 0)) return;
    } else {
      const t = parseInt(tk.dataset.t, 10);
      const c = r.strip[t];
      tip.appendChild(h("div", { class: "row" }, h("span", { class: "name" }, "token " + t), " “" + clip(chars.slice(c[0], c[1]).join(""), 40) +
        "” → " + fmt(c[2]) + " (summed weighted reward)"));
      for (const [name, v] of Object.entries(c[3] || {})) tip.appendChild(h("div", { class: "row" }, name + " " + fmt(v)));
      const card = tk.closest(".card");
      light([tk].concat(Array.from(card.querySelectorAll('.pc[data-tok="' + t + '"]'))));
    }
    tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - 470), y = ev.clientY + 16;
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = (y + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : y) + "px";
  }
  function onLeave(ev) {
    if (ev.relatedTarget && (ev.relatedTarget.closest(".pc") || ev.relatedTarget.closest(".tk"))) return;
    tip.hidden = true;
    light([]);
  }

  // -------------------------------------------------- interactive mode (GET /inspect)
  let token = "";           // kept in this page's memory only: never stored, never sent to anything but this server
  let served = null;        // the GET /v1/models reply

  function apiUrl(path) { return (DATA.api_base === "/" ? "" : DATA.api_base) + path; }

  async function call(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(apiUrl(path), { method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body),
                                            credentials: "omit", cache: "no-store" });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const reason = data && (data.reason || data.detail) ? (data.reason || JSON.stringify(data.detail)) : res.statusText;
      const hint = res.status === 401 ? " — enter the server's bearer token above" : "";
      throw new Error(method + " " + path + " → " + res.status + ": " + reason + hint);
    }
    return data;
  }

  function wordOffsets(text) {  // code points, like page_data.word_offsets
    const cps = Array.from(text), out = [];
    let i = 0;
    while (i < cps.length) {
      const s = i;
      while (i < cps.length && /\s/u.test(cps[i])) i++;
      if (i >= cps.length) break;
      while (i < cps.length && !/\s/u.test(cps[i])) i++;
      out.push([s, i]);
    }
    return out;
  }

  function isFlagged(label, value) { return label !== null && label !== undefined ? label !== "no_error" : !(value > 0); }

  // One /v1/score result → the page's response record (as page_data.build_page_data makes it).
  function recordFromResult(id, gid, policy, text, result, offsets) {
    const marks = {}, stats = {};
    for (const m of DATA.models) {
      const score = result.scores[m.name];
      if (!score) continue;
      const list = score.segments.map(s => [s.char_start, s.char_end, s.label === undefined ? null : s.label,
        s.probability === undefined ? null : s.probability, s.value, m.weight * (s.value - m.mean) / m.std]);
      list.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
      marks[m.name] = list;
      const flagged = list.filter(x => isFlagged(x[2], x[4])).length;
      stats[m.name] = { segments: list.length, flagged: flagged, share: list.length ? flagged / list.length : 0,
        raw: score.raw_total, weighted: score.weighted_total };
    }
    const tok = result.token_offsets || offsets;
    const metrics = { total: result.weighted_total || 0, words: text.split(/\s+/u).filter(Boolean).length,
                      chars: Array.from(text).length, tokens: tok ? tok.length : 0 };
    const strip = result.token_rewards && tok ? tok.map((o, t) => [o[0], o[1], result.token_rewards[t], {}]) : null;
    return { id: id, group: gid, policy: policy, sample: 0, source: "pasted", text: text, marks: marks, labels: {},
             missing: {}, stats: stats, metrics: metrics, strip: strip };
  }

  function buildForm() {
    const tokenIn = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "bearer token (if the server needs one)" });
    const promptIn = h("textarea", { id: "prompt-in", placeholder: "question: … answer:" });
    const respIn = h("textarea", { id: "responses-in", placeholder: "One response, or several separated by a line with only ---" });
    const namesIn = h("input", { type: "text", id: "names-in", placeholder: "names of the responses, comma-separated (optional)" });
    const btn = h("button", { type: "submit", id: "score-btn" }, "Score");
    const err = h("div", { class: "form-error", id: "form-error" });
    const status = h("span", { class: "form-status", id: "form-status" });
    const form = h("form", { class: "ask", id: "ask" },
      h("div", { class: "wide" }, h("label", { for: "token" }, "Bearer token — kept in this page only, sent only to this server"), tokenIn),
      h("div", null, h("label", { for: "prompt-in" }, "Prompt"), promptIn),
      h("div", null, h("label", { for: "responses-in" }, "Response(s)"), respIn),
      h("div", { class: "wide" }, namesIn),
      h("div", { class: "wide row-actions" }, btn, status),
      h("div", { class: "wide" }, err));
    tokenIn.addEventListener("change", () => { token = tokenIn.value.trim(); served = null; });
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      token = tokenIn.value.trim();
      err.textContent = "";
      const prompt = promptIn.value;
      const responses = respIn.value.split(/^\s*---\s*$/m).map(s => s.replace(/^\n+|\n+$/g, "")).filter(s => s.trim());
      if (!prompt.trim()) { err.textContent = "enter a prompt"; return; }
      if (!responses.length) { err.textContent = "enter at least one response"; return; }
      const names = namesIn.value.split(",").map(s => s.trim()).filter(Boolean);
      btn.disabled = true;
      status.textContent = "scoring…";
      try {
        if (!served) {
          served = await call("GET", "/v1/models");
          DATA.models = served.models.map(m => ({ name: m.name, density: m.density, weight: m.weight,
            mean: m.normalization.mean, std: m.normalization.std, kind: m.kind }));
          DATA.token_source = served.tokenizer ? "the server's policy tokenizer" : "whitespace words";
        }
        const lim = served.limits;
        const items = responses.map(text => {
          const item = { prompt: prompt, response: text };
          if (!served.tokenizer) item.token_offsets = wordOffsets(text);
          return item;
        });
        const wantTokens = served.tokenizer || items.every(it => it.token_offsets.length > 0 && it.token_offsets.length <= lim.max_token_offsets);
        if (!wantTokens) for (const it of items) delete it.token_offsets;
        const reply = await call("POST", "/v1/score", { items: items, return_total: true, return_token_rewards: !!wantTokens });
        const gid = DATA.groups.length;
        const group = { prompt: prompt, responses: [] };
        reply.results.forEach((res, k) => {
          const id = DATA.responses.length;
          const policy = names[k] || ("response " + (k + 1));
          if (DATA.policies.indexOf(policy) < 0) DATA.policies.push(policy);
          DATA.responses.push(recordFromResult(id, gid, policy, responses[k], res, items[k].token_offsets || null));
          group.responses.push(id);
        });
        DATA.groups.push(group);
        setupLanes();
        if (state.view === null || (DATA.policies.length > 1 && state.view === "stack" && DATA.groups.length === 1)) state.view = DATA.policies.length > 1 ? "side" : "stack";
        document.getElementById("view").value = state.view || "stack";
        refreshChrome();
        state.page = Math.max(0, Math.ceil(DATA.groups.length / state.pageSize) - 1);
        renderResults();
        status.textContent = "scored " + responses.length + " response" + (responses.length === 1 ? "" : "s") + " with " +
          reply.models.join(", ");
      } catch (e) {
        err.textContent = e.message;
        status.textContent = "";
      } finally {
        btn.disabled = false;
      }
    });
    return form;
  }

  // -------------------------------------------------------------------- start
  setupLanes();
  build();
  renderResults();
})();
