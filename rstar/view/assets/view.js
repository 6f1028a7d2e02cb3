// rstar view: draws the data embedded in this file (computed by rstar/view/data.py).
// Every text from the run is untrusted model output: it is only ever set with textContent.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("rstar-data").textContent);
  const STATES = DATA.states;
  const SVGNS = "http://www.w3.org/2000/svg";
  const byId = new Map(DATA.problems.map((p) => [p.id, p]));
  const app = document.getElementById("app");
  const crumb = document.getElementById("crumb");
  const tooltip = document.getElementById("tooltip");
  const GRADE_LABEL = { correct: "correct", wrong: "wrong", unknown: "ungraded", nogold: "no gold" };
  const GRADE_COLOR = { correct: "var(--st-correct)", wrong: "var(--st-wrong)", unknown: "var(--st-unknown)", nogold: "#9aa3ad" };

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "cls") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (k === "cls") e.setAttribute("class", v); else e.setAttribute(k, v);
    }
    return e;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : String(parseFloat(Number(x).toFixed(d))));
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  const int = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"));
  const secs = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)) + " s";
  const treeHref = (id) => "#/tree/" + encodeURIComponent(id);
  function shorten(s, n) { s = String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  // ------------------------------------------------------------------ router
  function route() {
    tooltip.hidden = true;
    const h = location.hash;
    if (h.startsWith("#/tree/")) {
      const id = decodeURIComponent(h.slice(7));
      const p = byId.get(id);
      if (p) return treePage(p);
      app.className = "run";
      app.replaceChildren(el("p", { cls: "warn", text: "No problem with id " + id + " in this file." }), el("a", { href: "#/", text: "back to the run" }));
      return;
    }
    if (DATA.focus && h === "") return treePage(byId.get(DATA.focus));
    runPage();
  }
  window.addEventListener("hashchange", route);

  // ------------------------------------------------------------------ run page
  function card(label, value, sub, extra) {
    return el("div", { cls: "card" }, el("div", { cls: "label", text: label }), el("div", { cls: "value", text: value }),
      sub ? el("div", { cls: "sub", text: sub }) : null, extra || null);
  }

  function runPage() {
    const s = DATA.summary;
    app.className = "run";
    crumb.textContent = DATA.run;
    document.title = "rstar view: " + DATA.run;
    const cfg = s.config || {};
    const prov = [];
    for (const k of ["algo", "method", "scorer", "reward", "model", "template", "data"]) if (typeof cfg[k] === "string" || typeof cfg[k] === "number") prov.push(k + ": " + cfg[k]);
    const t = s.time;
    const split = el("div", { cls: "split", title: "model / sandbox / scorer / other" });
    const parts = [["model_s", "#3b7dd8", "model"], ["sandbox_s", "#1f9d55", "sandbox"], ["scorer_s", "#8a63c7", "scorer"], ["other_s", "#9aa3ad", "other"]];
    const tsum = parts.reduce((a, [k]) => a + (t[k] || 0), 0) || 1;
    const splitText = [];
    for (const [k, c, name] of parts) {
      if (!t[k]) continue;
      split.append(el("span", { style: "background:" + c + ";width:" + (100 * t[k] / tsum).toFixed(2) + "%", title: name + " " + secs(t[k]) }));
      splitText.push(name + " " + (100 * t[k] / tsum).toFixed(0) + "%");
    }
    const acc = s.accuracy === null ? "–" : pct(s.accuracy);
    const accSub = s.graded ? s.correct + " / " + s.graded + " graded" + (s.accuracy_ci ? " · 95% CI " + pct(s.accuracy_ci[0]) + " – " + pct(s.accuracy_ci[1]) : "") : "no gold answers";
    const cards = el("div", { cls: "cards" },
      card("accuracy", acc, accSub),
      card("pass@k", s.pass_at_k === null ? "–" : pct(s.pass_at_k), s.pass_at_k_n ? "any finished solution correct" : "no gold answers"),
      card("unknown grades", int(s.unknown), s.unknown_terminal + " ungraded finished solutions"),
      card("answered", int(s.answered) + " / " + int(s.problems), "problems with a selected answer"),
      card("tokens", int(s.tokens), s.problems ? int(s.tokens / s.problems) + " per problem" : ""),
      card("search", int(s.rollouts) + " rollouts", int(s.nodes) + " nodes"),
      card("time", secs(t.total_s || 0), splitText.join(" · "), split));
    cards.id = "summary";
    const kids = [el("h1", { text: "Run " + DATA.run }), prov.length ? el("div", { cls: "muted", text: prov.join(" · ") }) : null];
    if (s.gold_rewards) kids.push(el("div", { cls: "warn", text: "The search was rewarded by the gold answers (data generation): the selected answers are oracle-guided, so accuracy is not a blind figure." }));
    if (Object.keys(cfg).length) kids.push(el("details", { id: "recipe" }, el("summary", { text: "the run's recipe (run.json)" }), el("pre", { text: JSON.stringify(cfg, null, 2) })));
    kids.push(cards, el("h2", { text: "Charts" }), charts(s), el("h2", { text: "Problems" }), problemsTable());
    app.replaceChildren(...kids.filter((k) => k));
  }

  function chartBox(title, body, legend) {
    return el("div", { cls: "chart" }, el("h3", { text: title }), body, legend || null);
  }
  function legend(items) {
    return el("div", { cls: "legend" }, ...items.map(([label, color]) => el("span", {}, el("i", { style: "background:" + color }), label)));
  }

  function barChart(values, opts) {
    // vertical bars; values: [{v, color, label, href}]
    const W = 560, H = 170, L = 44, B = 22, T = 8;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    const max = Math.max(1, ...values.map((d) => d.v));
    const bw = (W - L - 6) / Math.max(1, values.length);
    for (const f of [0, 0.5, 1]) {
      const y = T + (H - T - B) * (1 - f);
      s.append(svg("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#e3e7eb" }));
      s.append(svg("text", { x: L - 4, y: y + 4, "text-anchor": "end", text: opts.fmt ? opts.fmt(max * f) : int(max * f) }));
    }
    values.forEach((d, i) => {
      const h = (H - T - B) * d.v / max;
      const r = svg("rect", { cls: "bar", x: L + i * bw + (bw > 4 ? 1 : 0), y: T + (H - T - B) - h, width: Math.max(0.5, bw - (bw > 4 ? 2 : 0)), height: h, fill: d.color });
      r.append(svg("title", { text: d.label }));
      if (d.href) {
        const a = svg("a", { href: d.href });
        a.append(r);
        s.append(a);
      } else s.append(r);
    });
    const step = Math.max(1, Math.ceil(values.length / 12));
    values.forEach((d, i) => {
      if (i % step === 0 && opts.xlabel) s.append(svg("text", { x: L + (i + 0.5) * bw, y: H - 6, "text-anchor": "middle", text: opts.xlabel(d, i) }));
    });
    return s;
  }

  function hbarChart(rows, opts) {
    // horizontal bars with labels on the left: rows [{label, v, color}]
    const W = 560, rowH = 20, L = opts.labelWidth || 200;
    const H = Math.max(30, rows.length * rowH + 6);
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    const max = Math.max(1, ...rows.map((r) => r.v));
    rows.forEach((r, i) => {
      const y = 3 + i * rowH;
      const label = svg("text", { x: L - 6, y: y + 13, "text-anchor": "end", text: shorten(r.label, opts.maxChars || 34) });
      label.append(svg("title", { text: r.label }));
      s.append(label);
      const w = (W - L - 50) * r.v / max;
      const rect = svg("rect", { cls: "bar", x: L, y: y + 2, width: Math.max(r.v ? 1 : 0, w), height: rowH - 6, fill: r.color });
      rect.append(svg("title", { text: r.label + ": " + r.v }));
      s.append(rect);
      s.append(svg("text", { x: L + w + 4, y: y + 13, text: int(r.v) }));
    });
    if (!rows.length) s.append(svg("text", { x: 10, y: 20, text: "none" }));
    return s;
  }

  function charts(s) {
    const probs = DATA.problems;
    const gradeLegend = legend(["correct", "wrong", "unknown", "nogold"].map((g) => [GRADE_LABEL[g], GRADE_COLOR[g]]));
    const tok = barChart(probs.map((p) => ({ v: p.tokens, color: GRADE_COLOR[p.grade], href: treeHref(p.id),
      label: p.id + ": " + GRADE_LABEL[p.grade] + ", " + int(p.tokens) + " tokens, answer " + (p.answer === null ? "none" : p.answer) })),
      { title: "tokens per problem", xlabel: (d, i) => String(i + 1) });
    // running accuracy over the graded problems, with its Wilson 95% band
    const graded = probs.filter((p) => p.grade !== "nogold");
    let ok = 0;
    const acc = graded.map((p, i) => { if (p.grade === "correct") ok++; return { v: ok / (i + 1), color: GRADE_COLOR[p.grade], href: treeHref(p.id), label: p.id + ": " + GRADE_LABEL[p.grade] + " · running accuracy " + pct(ok / (i + 1)) }; });
    const accChart = graded.length ? barChart(acc, { title: "running accuracy", fmt: (x) => pct(x), xlabel: (d, i) => String(i + 1) }) : el("p", { cls: "muted", text: "no gold answers: nothing graded" });
    const depths = barChart(s.depths.map((v, d) => ({ v, color: "#3b7dd8", label: "depth " + d + ": " + v + " nodes" })), { title: "nodes per depth", xlabel: (d, i) => String(i) });
    const states = hbarChart(Object.keys(STATES).map((k) => ({ label: STATES[k], v: s.states[k] || 0, color: "var(--st-" + k + ")" })), { title: "node states", labelWidth: 170 });
    const reasons = hbarChart(s.reasons.map(([r, v]) => ({ label: r, v, color: "var(--st-error)" })), { title: "failure reasons", labelWidth: 300, maxChars: 48 });
    const box = el("div", { cls: "charts" },
      chartBox("Accuracy per problem (running, graded problems in order; bar colour: that problem's grade)", accChart, gradeLegend.cloneNode(true)),
      chartBox("Tokens per problem (colour: grade; click a bar for its tree)", tok, gradeLegend),
      chartBox("Nodes per depth (all trees)", depths),
      chartBox("Node states (all trees)", states),
      chartBox("Most common failure reasons (names and numbers folded)", reasons));
    box.id = "charts";
    return box;
  }

  const COLUMNS = [
    { key: "index", label: "#", num: true, get: (p, i) => (p.index === null ? i : p.index) },
    { key: "id", label: "id", get: (p) => p.id },
    { key: "grade", label: "grade", get: (p) => ({ correct: 0, wrong: 1, unknown: 2, nogold: 3 })[p.grade] },
    { key: "answer", label: "answer", get: (p) => p.answer ?? "" },
    { key: "gold", label: "gold", get: (p) => p.gold ?? "" },
    { key: "rollouts", label: "rollouts", num: true, get: (p) => p.rollouts },
    { key: "nodes", label: "nodes", num: true, get: (p) => p.tree.length },
    { key: "tokens", label: "tokens", num: true, get: (p) => p.tokens },
    { key: "time", label: "time (s)", num: true, get: (p) => p.time.total_s },
  ];
  const tableState = { sort: null, dir: 1, filter: "", grade: "" };

  function problemsTable() {
    const tbody = el("tbody");
    const rows = DATA.problems.map((p, i) => {
      const tr = el("tr", { "data-id": p.id, "data-grade": p.grade },
        el("td", { cls: "num", text: String(COLUMNS[0].get(p, i)) }),
        el("td", {}, el("a", { href: treeHref(p.id), text: p.id })),
        el("td", {}, el("span", { cls: "grade " + p.grade, text: GRADE_LABEL[p.grade] })),
        el("td", { cls: "answer", text: p.answer ?? "–", title: p.answer ?? "" }),
        el("td", { cls: "answer", text: p.gold ?? "–", title: p.gold ?? "" }),
        el("td", { cls: "num", text: int(p.rollouts) }),
        el("td", { cls: "num", text: int(p.tree.length) }),
        el("td", { cls: "num", text: int(p.tokens) }),
        el("td", { cls: "num", text: fmt(p.time.total_s, 2) }));
      const hay = [p.id, p.question, p.answer, p.gold].join("\n").toLowerCase();
      return { p, i, tr, hay };
    });
    const head = el("tr");
    const ths = COLUMNS.map((c, ci) => {
      const th = el("th", { cls: c.num ? "num" : "", text: c.label, "data-key": c.key, title: "sort by " + c.label, onclick: () => {
        if (tableState.sort === ci) tableState.dir = -tableState.dir; else { tableState.sort = ci; tableState.dir = 1; }
        draw();
      } });
      head.append(th);
      return th;
    });
    const count = el("span", { cls: "muted" });
    function draw() {
      let shown = rows;
      const q = tableState.filter.toLowerCase();
      if (q) shown = shown.filter((r) => r.hay.includes(q));
      if (tableState.grade) shown = shown.filter((r) => r.p.grade === tableState.grade);
      if (tableState.sort !== null) {
        const c = COLUMNS[tableState.sort], d = tableState.dir;
        shown = shown.slice().sort((a, b) => {
          const x = c.get(a.p, a.i), y = c.get(b.p, b.i);
          const cmp = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
          return cmp * d || a.i - b.i;
        });
      }
      ths.forEach((th, ci) => th.setAttribute("aria-sort", ci === tableState.sort ? (tableState.dir > 0 ? "ascending" : "descending") : "none"));
      tbody.replaceChildren(...shown.map((r) => r.tr));
      count.textContent = shown.length + " of " + rows.length + " problems";
    }
    const filter = el("input", { type: "search", id: "problem-filter", placeholder: "filter: id, question, answer", value: tableState.filter,
      oninput: (e) => { tableState.filter = e.target.value; draw(); } });
    const grade = el("select", { id: "grade-filter", onchange: (e) => { tableState.grade = e.target.value; draw(); } },
      el("option", { value: "", text: "all grades" }), ...["correct", "wrong", "unknown", "nogold"].map((g) => el("option", { value: g, text: GRADE_LABEL[g] })));
    grade.value = tableState.grade;
    draw();
    return el("div", {}, el("div", { cls: "filters" }, filter, grade, count),
      el("table", { cls: "problems", id: "problems" }, el("thead", {}, head), tbody));
  }

  // ------------------------------------------------------------------ Python highlighting
  const KW = new Set("False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield".split(" "));
  const BI = new Set("print range len int float str round abs sum min max list dict set tuple sorted enumerate zip map filter math sympy np Rational sqrt solve symbols Eq simplify".split(" "));
  const TOKEN = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|(\b\d+(?:\.\d*)?(?:[eE][+-]?\d+)?\b)|([A-Za-z_]\w*)/g;
  function highlight(code) {
    const pre = el("pre", { cls: "code" });
    let last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code))) {
      if (m.index > last) pre.append(code.slice(last, m.index));
      let cls = null;
      if (m[1]) cls = "tok-com"; else if (m[2]) cls = "tok-str"; else if (m[3]) cls = "tok-num";
      else if (KW.has(m[4])) cls = "tok-kw"; else if (BI.has(m[4])) cls = "tok-bi";
      pre.append(cls ? el("span", { cls, text: m[0] }) : m[0]);
      last = m.index + m[0].length;
    }
    if (last < code.length) pre.append(code.slice(last));
    return pre;
  }

  // ------------------------------------------------------------------ tree page
  let view = null; // the tree page's state, reachable from the console for debugging: window.rstarView

  function treePage(p) {
    const nodes = p.tree;
    const children = nodes.map(() => []);
    for (const n of nodes) if (n.parent >= 0) children[n.parent].push(n.id);
    const size = new Int32Array(nodes.length).fill(1);
    for (let i = nodes.length - 1; i > 0; i--) size[nodes[i].parent] += size[i];
    const onPath = new Set(p.chosen_path);
    const maxVisits = Math.max(1, ...nodes.map((n) => n.visits || 0));
    view = { p, nodes, children, size, onPath, maxVisits, collapsed: new Set(), matches: [], matchAt: -1, selected: null, t: { x: 0, y: 0, k: 1 }, pos: null };
    window.rstarView = view;
    app.className = "tree";
    const idx = DATA.problems.indexOf(p);
    crumb.textContent = DATA.run + " / " + p.id;
    document.title = "rstar view: " + p.id;

    const facts = el("div", { cls: "facts" });
    const fact = (k, v) => facts.append(el("span", {}, k + " ", el("b", { text: v })));
    fact("answer", p.answer ?? "none");
    fact("gold", p.gold ?? "none");
    facts.append(el("span", { cls: "grade " + p.grade, text: GRADE_LABEL[p.grade] }));
    fact("nodes", int(nodes.length));
    fact("rollouts", int(p.rollouts));
    fact("tokens", int(p.tokens));
    fact("time", secs(p.time.total_s || 0));
    if (p.selection) fact("selection", p.selection);
    if (p.algo) fact("algorithm", p.algo);
    if (p.scorer) fact("scorer", p.scorer);
    const nav = el("span", {});
    if (idx > 0) nav.append(el("a", { href: treeHref(DATA.problems[idx - 1].id), text: "← previous" }), " ");
    if (idx < DATA.problems.length - 1) nav.append(el("a", { href: treeHref(DATA.problems[idx + 1].id), text: "next →" }));
    const head = el("div", { cls: "tree-head" },
      el("div", {}, el("a", { href: "#/", text: "run" }), " / ", el("b", { text: p.id }), "  ", nav),
      el("div", { cls: "question", text: p.question }), facts);

    const search = el("input", { type: "search", id: "node-search", placeholder: "search steps, code, output, reasons" });
    const found = el("span", { cls: "muted", id: "match-count" });
    search.addEventListener("input", () => runSearch(search.value, found));
    search.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); nextMatch(e.shiftKey ? -1 : 1); } });
    const toolbar = el("div", { cls: "toolbar" }, search, found,
      el("button", { id: "expand-all", text: "expand all", onclick: () => { view.collapsed.clear(); layoutAndDraw(); } }),
      el("button", { id: "collapse-all", text: "collapse below depth 2", onclick: () => { view.collapsed = new Set(nodes.filter((n) => n.depth === 2 && children[n.id].length).map((n) => n.id)); layoutAndDraw(); } }),
      el("button", { id: "fit", text: "fit", onclick: () => fit() }),
      legend(Object.keys(STATES).map((k) => [STATES[k], "var(--st-" + k + ")"]).concat([["chosen path", "var(--chosen)"]])));

    const svgEl = svg("svg", { id: "tree-svg", role: "img", "aria-label": "search tree of " + p.id });
    const g = svg("g", { id: "viewport" });
    svgEl.append(g);
    const canvas = el("div", { cls: "canvas" }, svgEl);
    const side = el("div", { cls: "side", id: "details" });
    view.svg = svgEl; view.g = g; view.side = side;
    app.replaceChildren(head, toolbar, el("div", { cls: "tree-body" }, canvas, side));
    if (!nodes.length) {
      side.append(el("p", { cls: "warn", text: "This record holds no tree." }));
    }
    solutionPanel();
    wirePanZoom(svgEl, g);
    svgEl.addEventListener("click", (e) => {
      const id = e.target.getAttribute && e.target.getAttribute("data-id");
      if (id !== null && id !== undefined && !view.dragged) {
        const n = +id;
        if (e.shiftKey || e.detail === 2) toggle(n); else select(n);
      }
    });
    svgEl.addEventListener("mouseover", (e) => {
      const id = e.target.getAttribute && e.target.getAttribute("data-id");
      if (id === null || id === undefined) return;
      const n = nodes[+id];
      tooltip.textContent = "node " + n.id + " · " + STATES[n.state] + "\nQ " + fmt(n.q) + " · visits " + (n.visits || 0) +
        (n.value !== undefined ? " · value " + fmt(n.value) : "") + (n.answer ? "\nanswer " + shorten(n.answer, 60) : "") +
        (n.reason ? "\n" + shorten(n.reason, 120) : "");
      tooltip.hidden = false;
    });
    svgEl.addEventListener("mousemove", (e) => { tooltip.style.left = e.clientX + 14 + "px"; tooltip.style.top = e.clientY + 12 + "px"; });
    svgEl.addEventListener("mouseout", (e) => { if (e.target.getAttribute && e.target.getAttribute("data-id") !== null) tooltip.hidden = true; });
    layoutAndDraw();
    fit(0.35);
  }

  const DX = 26, DY = 70;

  function layout() {
    // top-down: each visible leaf takes the next column; a parent sits over the middle of its children
    const { nodes, children, collapsed } = view;
    const x = new Float64Array(nodes.length).fill(NaN);
    if (!nodes.length) return x;
    let col = 0;
    const stack = [[0, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [n, k] = top;
      const kids = collapsed.has(n) ? [] : children[n];
      if (k < kids.length) { top[1]++; stack.push([kids[k], 0]); continue; }
      stack.pop();
      x[n] = kids.length ? (x[kids[0]] + x[kids[kids.length - 1]]) / 2 : col++;
    }
    view.columns = col;
    return x;
  }

  function radius(n) { return 5 + 8 * Math.sqrt((n.visits || 0) / view.maxVisits); }

  function layoutAndDraw() {
    const { nodes, onPath, g } = view;
    const x = layout();
    view.pos = x;
    let edges = "", chosen = "";
    const frag = document.createDocumentFragment();
    const circles = [];
    const fold = [];
    for (const n of nodes) {
      if (Number.isNaN(x[n.id])) continue;
      const cx = x[n.id] * DX, cy = n.depth * DY;
      if (n.parent >= 0) {  // from the parent's rim to the child's: shaded nodes show no line through them
        const px = x[n.parent] * DX, py = (n.depth - 1) * DY + radius(nodes[n.parent]), ty = cy - radius(n), my = (py + ty) / 2;
        const d = `M${px},${py.toFixed(1)}C${px},${my.toFixed(1)} ${cx},${my.toFixed(1)} ${cx},${ty.toFixed(1)}`;
        if (onPath.has(n.id) && onPath.has(n.parent)) chosen += d; else edges += d;
      }
      const c = svg("circle", { cx, cy, r: radius(n).toFixed(2), "data-id": n.id, "data-state": n.state });
      let cls = "node st-" + n.state;
      if (onPath.has(n.id)) cls += " chosen";
      if (view.collapsed.has(n.id) && view.children[n.id].length) {
        cls += " collapsed";
        fold.push(svg("text", { cls: "fold", x: cx + radius(n) + 2, y: cy + 4, text: "+" + (view.size[n.id] - 1) }));
      }
      c.setAttribute("class", cls);
      c.style.fillOpacity = (0.6 + 0.4 * Math.sqrt((n.visits || 0) / view.maxVisits)).toFixed(2);
      circles.push(c);
    }
    const eg = svg("g", { cls: "edges" });
    eg.append(svg("path", { d: edges }), svg("path", { cls: "chosen-edges", d: chosen }));
    frag.append(eg, ...circles, ...fold);
    g.replaceChildren(frag);
    view.circles = new Map(circles.map((c) => [+c.getAttribute("data-id"), c]));
    markClasses();
  }

  function markClasses() {
    const m = new Set(view.matches);
    for (const [id, c] of view.circles) {
      c.classList.toggle("match", m.has(id));
      c.classList.toggle("selected", id === view.selected);
    }
  }

  function applyTransform() { const t = view.t; view.g.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`); }

  function fit(minScale) {
    // the whole tree in view; on first draw no smaller than minScale, with the root at the top centre
    const r = view.svg.getBoundingClientRect(), W = r.width || 800, H = r.height || 500;
    const w = Math.max(1, (view.columns || 1) - 1) * DX + 40, h = Math.max(1, ...view.nodes.map((n) => n.depth)) * DY + 40;
    let k = Math.max(0.02, Math.min(1.6, W / w, H / h));
    if (minScale && k < minScale) {
      k = minScale;
      view.t = { k, x: W / 2 - (view.pos.length ? view.pos[0] : 0) * DX * k, y: 20 * k + 10 };
    } else {
      view.t = { k, x: (W - ((view.columns || 1) - 1) * DX * k) / 2, y: 20 * k + 10 };
    }
    applyTransform();
  }

  function centerOn(id) {
    const r = view.svg.getBoundingClientRect(), t = view.t;
    t.x = r.width / 2 - view.pos[id] * DX * t.k;
    t.y = r.height / 3 - view.nodes[id].depth * DY * t.k;
    applyTransform();
  }

  function wirePanZoom(svgEl) {
    let start = null;
    svgEl.addEventListener("pointerdown", (e) => { start = { x: e.clientX, y: e.clientY, tx: view.t.x, ty: view.t.y }; view.dragged = false; });
    svgEl.addEventListener("pointermove", (e) => {
      if (!start) return;
      const dx = e.clientX - start.x, dy = e.clientY - start.y;
      if (!view.dragged && Math.abs(dx) + Math.abs(dy) < 4) return;
      if (!view.dragged) { view.dragged = true; svgEl.setPointerCapture(e.pointerId); svgEl.classList.add("dragging"); }
      view.t.x = start.tx + dx; view.t.y = start.ty + dy;
      applyTransform();
    });
    const end = () => { start = null; svgEl.classList.remove("dragging"); setTimeout(() => { view.dragged = false; }, 0); };
    svgEl.addEventListener("pointerup", end);
    svgEl.addEventListener("pointercancel", end);
    svgEl.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = svgEl.getBoundingClientRect(), t = view.t;
      const k = Math.min(4, Math.max(0.02, t.k * Math.exp(-e.deltaY * 0.0015)));
      const mx = e.clientX - r.left, my = e.clientY - r.top;
      t.x = mx - (mx - t.x) * k / t.k; t.y = my - (my - t.y) * k / t.k; t.k = k;
      applyTransform();
    }, { passive: false });
  }

  function toggle(id) {
    if (!view.children[id].length) return;
    if (view.collapsed.has(id)) view.collapsed.delete(id); else view.collapsed.add(id);
    layoutAndDraw();
    if (view.selected !== null) select(view.selected, true);
  }

  function revealAncestors(id) {
    let changed = false;
    for (let a = view.nodes[id].parent; a >= 0; a = view.nodes[a].parent) if (view.collapsed.delete(a)) changed = true;
    return changed;
  }

  function section(title, content) { return [el("h3", { text: title }), content]; }

  function select(id, keepScroll) {
    const n = view.nodes[id];
    view.selected = id;
    if (revealAncestors(id)) layoutAndDraw(); else markClasses();
    const side = view.side;
    const kids = view.children[id];
    const dl = el("dl");
    const row = (k, v) => { if (v !== undefined && v !== null && v !== "") dl.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
    row("state", STATES[n.state]);
    row("kind", n.kind);
    row("status", n.status);
    row("depth", n.depth);
    row("visits", n.visits || 0);
    row("Q", n.q === undefined ? "– (unvisited)" : fmt(n.q, 4));
    row("value", n.value === undefined ? undefined : fmt(n.value, 4));
    row("prior", n.prior === undefined ? undefined : fmt(n.prior, 4));
    row("tokens", n.tokens);
    row("log-prob", n.logprob === undefined ? undefined : fmt(n.logprob, 3));
    row("answer", n.answer);
    row("grade", n.correct === true ? "correct" : n.correct === false ? "wrong" : n.answer ? "not graded" : undefined);
    row("terminal", n.terminal_kind || (n.terminal ? "yes" : undefined));
    row("children", kids.length ? kids.length + " (" + (view.size[id] - 1) + " below)" : "none");
    row("on chosen path", view.onPath.has(id) ? "yes" : undefined);
    const buttons = el("div", { cls: "buttons" });
    if (n.parent >= 0) buttons.append(el("button", { text: "parent", onclick: () => select(n.parent) }));
    if (kids.length) buttons.append(el("button", { id: "toggle-subtree", text: view.collapsed.has(id) ? "expand subtree" : "collapse subtree", onclick: () => toggle(id) }));
    buttons.append(el("button", { text: "center", onclick: () => centerOn(id) }));
    const parts = [el("h3", { id: "node-title", text: "node " + id + " · " + STATES[n.state] }), buttons, dl];
    if (n.reason) parts.push(...section("Why it was cut", el("pre", { cls: "reason", id: "node-reason", text: n.reason })));
    if (n.text) parts.push(...section("Step text", el("pre", { id: "node-text", text: n.text })));
    if (n.code) { const c = highlight(n.code); c.id = "node-code"; parts.push(...section("Code", c)); }
    if (n.output) parts.push(...section(n.state === "error" ? "Output (the error)" : "Output", el("pre", { cls: n.state === "error" ? "reason" : "", id: "node-output", text: n.output })));
    if (n.shown) parts.push(...section("Shown to the model in later prompts", el("pre", { id: "node-shown", text: n.shown })));
    if (n.prompt) parts.push(...section("Prompt", el("pre", { text: n.prompt })));
    if (id === 0 && view.p.prompt) parts.push(...section("Prompt before the first step", el("pre", { text: view.p.prompt })));
    parts.push(el("h3", { text: "Chosen solution" }), solutionList());
    side.replaceChildren(...parts);
    if (!keepScroll) side.scrollTop = 0;
  }

  function solutionList() {
    const p = view.p;
    if (p.chosen_path.length > 1) {
      return el("ol", { cls: "steps", id: "chosen-steps" }, ...p.chosen_path.slice(1).map((id) => {
        const n = view.nodes[id];
        const first = (n.text || n.code || "").trim().split("\n")[0];
        return el("li", { "data-id": id, text: shorten(first || "(empty step)", 90), onclick: () => { select(id); centerOn(id); } });
      }));
    }
    if (p.solution.length) {
      return el("div", {}, el("p", { cls: "muted", text: "The solution's steps, which could not be matched to nodes of the tree:" }),
        ...p.solution.map((s) => el("pre", { text: (s.code || s.text || "") + (s.output ? "\n# output: " + s.output : "") })));
    }
    return el("p", { cls: "muted", text: "No solution was chosen." });
  }

  function solutionPanel() {
    const p = view.p;
    view.side.replaceChildren(...[el("p", { cls: "muted", text: "Click a node for its step, code, output and the reason it was cut. Shift-click or double-click collapses or expands its subtree. Drag to pan, wheel to zoom." }),
      el("h3", { text: "Chosen solution" }), solutionList(),
      p.prompt ? el("details", {}, el("summary", { text: "prompt before the first step" }), el("pre", { text: p.prompt })) : null].filter((k) => k));
  }

  function runSearch(q, out) {
    q = q.trim().toLowerCase();
    view.matches = [];
    view.matchAt = -1;
    if (q) {
      let changed = false;
      for (const n of view.nodes) {
        if ([n.text, n.code, n.output, n.reason, n.answer].some((s) => s && s.toLowerCase().includes(q))) {
          view.matches.push(n.id);
          if (revealAncestors(n.id)) changed = true;
        }
      }
      if (changed) layoutAndDraw();
    }
    markClasses();
    out.textContent = q ? view.matches.length + " match" + (view.matches.length === 1 ? "" : "es") + (view.matches.length ? " (Enter: next)" : "") : "";
  }

  function nextMatch(d) {
    if (!view.matches.length) return;
    view.matchAt = (view.matchAt + d + view.matches.length) % view.matches.length;
    const id = view.matches[view.matchAt];
    select(id);
    centerOn(id);
  }

  route();
})();
