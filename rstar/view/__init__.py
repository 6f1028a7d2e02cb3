"""`rstar view`: a self-contained HTML viewer for a run and its search trees.

    rstar view RUN_DIR [--problem ID] [--out FILE.html] [--open]

writes one HTML file (styles, script and data inline; no network, no server)
with a run page (accuracy with its 95% interval, pass@k, tokens, the time split,
charts, a sortable problems table) and a tree page per problem (nodes coloured
by state, sized by visits, the chosen path highlighted, details on click).

    from rstar.view import write_view
    path = write_view("runs/gsm8k", problem=None, out=None)   # -> runs/gsm8k/view.html
"""

from __future__ import annotations

import sys

from rstar.view.page import build_data, render_html, write_view

__all__ = ["register", "write_view", "build_data", "render_html"]


def register(sub) -> None:
    p = sub.add_parser(
        "view", help="write a self-contained HTML viewer for a run directory and its search trees",
        description="Write one HTML file that shows a run (accuracy with its Wilson 95%% interval, pass@k, "
                    "tokens, the model/sandbox/other time split, charts, a sortable and filterable table of "
                    "problems) and each problem's search tree (nodes coloured by state: valid step, failed "
                    "execution, parse error, depth limit, finished correct/wrong/ungraded; sized by visits; "
                    "click a node for its text, code, output and the reason it was cut; the chosen solution's "
                    "path highlighted; collapse subtrees; search by text). Everything is inline: the file "
                    "opens from disk with no network and no server.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the --out of `rstar run`: results.jsonl, run.json)")
    p.add_argument("--problem", metavar="ID", default=None, help="only this problem's tree (default: every problem)")
    p.add_argument("--out", metavar="FILE.html", default=None, help="where to write the page (default: RUN_DIR/view.html)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser, where there is one")
    p.set_defaults(func=cmd_view)


def cmd_view(args) -> int:
    path = write_view(args.run_dir, out=args.out, problem=args.problem)
    print(path)
    if args.open:
        _open(path)
    return 0


def _open(path) -> None:
    import webbrowser

    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        print(f"rstar: no browser found here; open {path} in one", file=sys.stderr)
