"""One self-contained HTML file: the page skeleton, styles, script and data, all inline.

The data goes in as JSON inside a `<script type="application/json">` element with
every `<`, `>` and `&` written as a JSON escape, so no text of a model's step can
close the element; the script builds the page with DOM calls and `textContent`
only, never from HTML strings. A Content-Security-Policy forbids every network
request, so the file behaves the same offline.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path

from rstar.view.data import STATES, load_run, problem_view, run_summary, select_problem


def _asset(name: str) -> str:
    return resources.files("rstar.view").joinpath("assets", name).read_text(encoding="utf-8")


def embed_json(value) -> str:
    """JSON that is safe inside a <script> element (and in HTML generally)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def build_data(run_dir: str | Path, problem: str | None = None) -> dict:
    """Everything the page shows, as one JSON-able dict."""
    run_dir = Path(run_dir)
    records, config = load_run(run_dir)
    if problem is not None:
        records = select_problem(records, problem)
    records.sort(key=lambda r: (r.get("index") if isinstance(r.get("index"), int) else 1 << 62, str(r.get("id"))))
    problems = [problem_view(r) for r in records]
    return {
        "run": str(run_dir.resolve().name or run_dir),
        "focus": problems[0]["id"] if problem is not None else None,
        "states": STATES,
        "summary": run_summary(problems, config),
        "problems": problems,
    }


def render_html(data: dict) -> str:
    title = f"rstar view: {data['run']}" + (f" / {data['focus']}" if data.get("focus") else "")
    parts = {"TITLE": html.escape(title), "STYLE": _asset("view.css"), "DATA": embed_json(data),
             "SCRIPT": _asset("view.js")}
    # one pass over the skeleton only: a placeholder inside the data is left as it is
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], _asset("page.html"))


def write_view(run_dir: str | Path, out: str | Path | None = None, problem: str | None = None) -> Path:
    """Write the viewer for RUN_DIR (default RUN_DIR/view.html) and return its path."""
    data = build_data(run_dir, problem)
    path = Path(out) if out is not None else Path(run_dir) / "view.html"
    if path.parent and not path.parent.is_dir():
        from rstar.errors import DataError
        raise DataError(f"{path.parent}: no such directory for --out (create it, or choose another path)")
    text = render_html(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
