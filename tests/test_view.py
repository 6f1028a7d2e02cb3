"""`rstar view`: the HTML file checked in a real headless Chromium (Selenium + Debian's chromium-driver).

The run directories come from a real search (rstar's ScriptedPolicy, the real C++
core, every step executed in the real Docker sandbox), plus hand-written records
for what a scripted search does not produce: schema 1 and 2 variants, MCTSr
whole-answer trees, hostile text, a tree of thousands of nodes.
"""

import json
import math
import os
import stat
from pathlib import Path

import pytest

from conftest import assert_one_line_error, need, rstar

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900")


# ---------------------------------------------------------------------- helpers
def view(run_dir, *args):
    r = rstar("view", run_dir, *args)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.is_file()
    return path


def write_run(run_dir: Path, records, config=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "results.jsonl").open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    if config is not None:
        (run_dir / "run.json").write_text(json.dumps(config))
    return run_dir


def records_of(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]


def path_to(nodes, node_id):
    path = [node_id]
    while nodes[path[-1]]["parent"] >= 0:
        path.append(nodes[path[-1]]["parent"])
    return path[::-1]


def node(i, parent, **kw):
    base = {"id": i, "parent": parent, "depth": 0, "visits": 1, "q": 0.0, "prior": 1.0, "terminal": False,
            "kind": "code", "status": "ok", "reason": None, "text": f" {i}: step\nx{i} = {i}\n# Step",
            "code": f"x{i} = {i}", "output": "", "answer": None, "correct": None, "tokens": 5}
    base.update(kw)
    return base


# ---------------------------------------------------------------------- a real search
def _step_no(prompt: str, template) -> int:
    return prompt.rsplit(template.assistant_prefix, 1)[1].count("\n# Step") + 1


SCRIPT = {
    1: [" 1: six\nx = 6\n# Step",
        " 1: divide by zero\ny = 1 / 0\n# Step",        # runs and fails: cut with ZeroDivisionError
        " 1: broken syntax\nz = (1 +\n# Step"],         # does not parse: cut, never executed
    2: [" 2: the product\nprint(x * 7)\n```",
        " 2: a wrong product\nprint(x * 8)\n```"],
}


@pytest.fixture(scope="module")
def search_run(sandbox_pool, tmp_path_factory):
    """A run directory written by the real search: three problems (right, wrong, no gold)."""
    from rstar.policy.scripted import ScriptedPolicy
    from rstar.results import Problem, ResultWriter
    from rstar.search import MCTS, SearchConfig
    from rstar.templates import get_template

    template = get_template("default")

    def script(prompt, n):
        k = _step_no(prompt, template)
        cands = SCRIPT.get(k, ["garbage"])
        if k == 2 and "minus one" not in prompt:
            cands = cands[:1]  # one answer (42): the vote cannot tie
        return [cands[i % len(cands)] for i in range(n)]

    config = SearchConfig(rollouts=3, children=3, max_depth=4, temperature=0.7, concurrent_problems=2)
    problems = [Problem("p-right", "What is 6 times 7?", "42"),
                Problem("p-wrong", "What is 6 times 7, minus one?", "41"),
                Problem("p-nogold", "What is 6 <b>times</b> 7?", None)]
    run_dir = tmp_path_factory.mktemp("run")
    search = MCTS(ScriptedPolicy(script), template, sandbox_pool, config)  # no scorer: rewards 0, answer by vote or Q
    with ResultWriter(run_dir) as writer:
        for result in search.search(problems):
            writer.write(result)
    (run_dir / "run.json").write_text(json.dumps({"model": "scripted", "template": "default", "method": "mcts"}))
    return run_dir


# ---------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium", "pip install selenium")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        need("Chromium and its driver", "apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def load(driver, html: Path, fragment: str = ""):
    """Open the file fresh (a new document, so old logs and state do not carry over)."""
    driver.get("about:blank")
    driver.get_log("browser"), driver.get_log("performance")  # drain
    driver.get(html.resolve().as_uri() + fragment)
    driver.find_element("css selector", "#app > *:not(.loading)")


def requested_urls(driver):
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    urls += driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return urls


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def circles(driver):
    return driver.find_elements("css selector", "#tree-svg circle.node")


def tree_url(pid):
    from urllib.parse import quote
    return "#/tree/" + quote(pid, safe="")


def click(driver, element, shift=False):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    chain = ActionChains(driver).move_to_element(element)
    if shift:
        chain = chain.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
    else:
        chain = chain.click()
    chain.perform()


# ---------------------------------------------------------------------- browser tests
def test_the_network_check_sees_requests(browser, tmp_path):
    """The check used below is live: a page that does load something remote is caught."""
    page = tmp_path / "remote.html"
    page.write_text('<!DOCTYPE html><p>x</p><img src="http://127.0.0.1:9/pixel.png">')
    browser.get("about:blank")
    browser.get_log("performance")
    browser.get(page.as_uri())
    assert any(u.startswith("http://127.0.0.1:9/") for u in requested_urls(browser))


@pytest.mark.docker
def test_run_page_loads_offline_with_no_console_error(search_run, browser):
    from rstar.view.data import wilson

    html = view(search_run)
    assert html == search_run / "view.html"
    load(browser, html)
    urls = requested_urls(browser)
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls
    assert console_errors(browser) == []
    records = records_of(search_run)
    graded = [r for r in records if r["gold"] is not None]
    correct = sum(1 for r in graded if r["correct"])
    summary = browser.find_element("id", "summary").text
    assert f"{correct} / {len(graded)} graded" in summary
    lo, hi = wilson(correct, len(graded))
    assert f"95% CI {100 * lo:.1f}% – {100 * hi:.1f}%" in summary
    # the table lists every problem with its grade
    rows = browser.find_elements("css selector", "#problems tbody tr")
    assert sorted(r.get_attribute("data-id") for r in rows) == sorted(r["id"] for r in records)
    grades = {r.get_attribute("data-id"): r.get_attribute("data-grade") for r in rows}
    assert grades["p-nogold"] == "nogold"
    assert grades["p-right"] == "correct" and grades["p-wrong"] == "wrong"
    # charts are inline SVG, one bar per problem in the tokens chart
    assert len(browser.find_elements("css selector", "#charts svg")) == 5


@pytest.mark.docker
def test_every_node_of_every_tree_is_drawn(search_run, browser):
    html = view(search_run)
    for rec in records_of(search_run):
        load(browser, html, tree_url(rec["id"]))
        drawn = circles(browser)
        assert len(drawn) == len(rec["tree"]["nodes"]) == rec["nodes"]
        states = sorted(c.get_attribute("data-state") for c in drawn)
        failed = [n for n in rec["tree"]["nodes"] if n["status"] == "error"]
        unparsed = [n for n in rec["tree"]["nodes"] if n["status"] == "parse_error"]
        assert failed and unparsed
        assert states.count("error") == len(failed) and states.count("parse_error") == len(unparsed)
        assert console_errors(browser) == []


@pytest.mark.docker
def test_clicking_a_failed_node_shows_its_error(search_run, browser):
    rec = records_of(search_run)[0]
    load(browser, view(search_run), tree_url(rec["id"]))
    failed = browser.find_element("css selector", '#tree-svg circle[data-state="error"]')
    node_id = int(failed.get_attribute("data-id"))
    click(browser, failed)
    reason = browser.find_element("id", "node-reason").text
    assert reason == rec["tree"]["nodes"][node_id]["reason"]
    assert "ZeroDivisionError" in reason
    assert "1 / 0" in browser.find_element("id", "node-text").text
    assert "failed execution" in browser.find_element("id", "node-title").text
    assert "selected" in failed.get_attribute("class")


@pytest.mark.docker
def test_hover_shows_q_and_visits(search_run, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    rec = records_of(search_run)[0]
    load(browser, view(search_run), tree_url(rec["id"]))
    root = browser.find_element("css selector", '#tree-svg circle[data-id="0"]')
    ActionChains(browser).move_to_element(root).perform()
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed()
    q = rec["tree"]["nodes"][0]["q"]
    assert f"visits {rec['tree']['nodes'][0]['visits']}" in tip.text
    assert f"Q {q:.3f}".rstrip("0").rstrip(".") in tip.text


@pytest.mark.docker
def test_the_chosen_path_is_highlighted(search_run, browser):
    """Schema 2 names the chosen node; schema 1 (checked by hand-built records below) only the solution."""
    rec = next(r for r in records_of(search_run) if r["id"] == "p-right")
    nodes = rec["tree"]["nodes"]
    assert rec["answer"] == "42" and isinstance(rec["chosen"], int)
    expected = path_to(nodes, rec["chosen"])
    assert [nodes[i]["text"] for i in expected[1:]] == [s["text"] for s in rec["solution"]]
    assert len(expected) == len(rec["solution"]) + 1
    load(browser, view(search_run), tree_url(rec["id"]))
    chosen = browser.find_elements("css selector", "#tree-svg circle.node.chosen")
    assert sorted(int(c.get_attribute("data-id")) for c in chosen) == sorted(expected)
    # it looks different: a thick amber ring and an amber edge path
    other = next(c for c in circles(browser) if "chosen" not in c.get_attribute("class"))
    assert chosen[-1].value_of_css_property("stroke") != other.value_of_css_property("stroke")
    assert float(chosen[-1].value_of_css_property("stroke-width").rstrip("px")) >= 3
    assert browser.find_element("css selector", "path.chosen-edges").get_attribute("d").count("M") == len(expected) - 1
    steps = browser.find_elements("css selector", "#chosen-steps li")
    assert [int(s.get_attribute("data-id")) for s in steps] == expected[1:]


@pytest.mark.docker
def test_problems_table_sorts_and_filters(search_run, browser):
    records = records_of(search_run)
    load(browser, view(search_run))

    def ids():
        return [r.get_attribute("data-id") for r in browser.find_elements("css selector", "#problems tbody tr")]

    header = browser.find_element("css selector", '#problems th[data-key="tokens"]')
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    by_tokens = sorted(records, key=lambda r: (r["tokens"], r["index"]))
    assert ids() == [r["id"] for r in by_tokens]
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert ids() == [r["id"] for r in sorted(records, key=lambda r: (-r["tokens"], r["index"]))]
    browser.find_element("css selector", '#problems th[data-key="id"]').click()
    assert ids() == sorted(r["id"] for r in records)
    box = browser.find_element("id", "problem-filter")
    box.send_keys("minus one")  # matches the question text of p-wrong only
    assert ids() == ["p-wrong"]
    browser.execute_script("const e = document.getElementById('problem-filter'); e.value=''; e.dispatchEvent(new Event('input'))")
    assert len(ids()) == len(records)
    browser.find_element("css selector", '#problems a[href="#/tree/p-wrong"]').click()
    assert browser.find_element("css selector", ".tree-head b").text == "p-wrong"
    assert len(circles(browser)) == next(r for r in records if r["id"] == "p-wrong")["nodes"]


@pytest.mark.docker
def test_collapse_expand_and_search(search_run, browser):
    rec = records_of(search_run)[0]
    nodes = rec["tree"]["nodes"]
    load(browser, view(search_run), tree_url(rec["id"]))
    parent = next(n for n in nodes if n["depth"] == 1 and any(m["parent"] == n["id"] for m in nodes))
    below = sum(1 for n in nodes if parent["id"] in path_to(nodes, n["id"])[:-1])
    click(browser, browser.find_element("css selector", f'#tree-svg circle[data-id="{parent["id"]}"]'), shift=True)
    assert len(circles(browser)) == len(nodes) - below
    folded = browser.find_element("css selector", f'#tree-svg circle[data-id="{parent["id"]}"]')
    assert "collapsed" in folded.get_attribute("class")
    assert browser.find_element("css selector", "#tree-svg text.fold").text == f"+{below}"
    browser.find_element("id", "expand-all").click()
    assert len(circles(browser)) == len(nodes)
    # search reveals and marks the matching nodes
    click(browser, browser.find_element("css selector", f'#tree-svg circle[data-id="{parent["id"]}"]'), shift=True)
    box = browser.find_element("id", "node-search")
    box.send_keys("print(x * 7)")
    want = [n["id"] for n in nodes if "print(x * 7)" in (n["text"] + n["code"])]
    assert want
    marked = browser.find_elements("css selector", "#tree-svg circle.match")
    assert sorted(int(c.get_attribute("data-id")) for c in marked) == sorted(want)
    assert browser.find_element("id", "match-count").text.startswith(f"{len(want)} match")
    assert len(circles(browser)) == len(nodes)  # collapsed ancestors of matches were opened


def test_hostile_text_is_shown_not_run(browser, tmp_path):
    evil = '</script><script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">{{SCRIPT}}'
    nodes = [node(0, -1, kind="root", text="", code="", visits=2, q=-1.0),
             node(1, 0, depth=1, kind="invalid", status="error", text=evil, code="", output=evil, reason=evil,
                  q=-1.0)]
    rec = {"schema": 2, "id": "x\"'<b>", "index": 0, "question": evil, "gold": evil, "answer": evil,
           "correct": False, "grade": "not_equal", "chosen": None, "tree": {"nodes": nodes}}
    html = view(write_run(tmp_path / "run", [rec]))
    load(browser, html)
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.find_element("css selector", "#problems tbody td.answer").get_attribute("title") == evil
    load(browser, html, tree_url(rec["id"]))
    assert browser.find_element("css selector", ".tree-head .question").text == evil
    click(browser, browser.find_element("css selector", '#tree-svg circle[data-id="1"]'))
    assert browser.find_element("id", "node-reason").text == evil
    assert browser.execute_script("return window.__xss === undefined")
    assert all(u.startswith(("file:", "data:")) for u in requested_urls(browser))
    assert console_errors(browser) == []


def test_schema_variants_and_whole_answer_trees(browser, tmp_path):
    """Schema 2 with `chosen`, an MCTSr tree of whole answers, schema 1 with few fields, no tree at all."""
    s2_nodes = [node(0, -1, kind="root", text="", code="", visits=4, q=0.5),
                node(1, 0, depth=1, visits=3, q=1 / 3),
                node(2, 0, depth=1, visits=1, q=-1.0, kind="invalid", status="max_depth",
                     reason="reached the depth limit (1 steps) without an answer"),
                node(3, 1, depth=2, kind="final", terminal=True, terminal_kind="answer", answer="7", correct=True,
                     q=1.0, value=0.9),
                node(4, 1, depth=2, kind="final", terminal=True, terminal_kind="answer", answer="8", correct=None,
                     q=0.0),
                node(5, 1, depth=2, kind="final", terminal=True, terminal_kind="answer", answer=None,
                     status="no_answer", reason="the solution ended without an answer", q=-1.0)]
    s2 = {"schema": 2, "id": "s2", "index": 0, "question": "q2", "gold": "7", "answer": "7", "correct": True,
          "grade": "equal", "chosen": 3, "pass_at_k": True, "rollouts": 3, "nodes": 6, "tokens": 30,
          "selection": {"method": "vote", "votes": 1.0, "finished": 2, "value": 1.0}, "algo": "mcts",
          "scorer": "gold", "time": {"model_s": 1.0, "sandbox_s": 0.5, "scorer_s": 0.25, "other_s": 0.25,
                                     "total_s": 2.0, "wall_s": 2.0, "kind": "share"},
          "tree": {"nodes": s2_nodes}}
    whole = [node(0, -1, kind="root", text="", code="")] + [
        node(i, 0 if i < 3 else i - 2, depth=1 if i < 3 else 2, kind="whole", text=f"answer {i}", code="",
             answer=str(i), correct=(i == 4), terminal=False) for i in range(1, 6)]
    mctsr = {"schema": 2, "id": "mctsr", "index": 1, "question": "q3", "gold": "4", "answer": "4", "correct": True,
             "grade": "equal", "chosen": 4, "algo": "mctsr", "tree": {"nodes": whole}}
    # schema 1: no `chosen`; the path is found by the solution's step texts (and code, where texts repeat)
    t1, t2 = " 1: x\nx = 1 / 1\n# Step", " 2: done\nprint(5)\n```"
    s1_nodes = [{"id": 0, "parent": -1, "depth": 0, "visits": 1, "q": 1.0, "kind": "root", "status": "ok",
                 "text": "", "code": "", "output": ""},
                {"id": 1, "parent": 0, "depth": 1, "visits": 0, "q": None, "kind": "code", "status": "error",
                 "text": t1, "code": "", "output": "ZeroDivisionError: float division by zero"},
                {"id": 2, "parent": 0, "depth": 1, "visits": 1, "q": 1.0, "kind": "code", "status": "ok",
                 "text": t1, "code": "x = 1 / 1", "output": ""},
                {"id": 3, "parent": 2, "depth": 2, "visits": 1, "q": 1.0, "kind": "final", "status": "ok",
                 "terminal": True, "text": t2, "code": "print(5)", "output": "5\n", "answer": "5", "correct": True}]
    s1 = {"id": "s1", "index": 2, "question": "q1", "gold": "5", "answer": "5", "correct": True,
          "selection": "q", "solution": [{"text": t1, "code": "x = 1 / 1", "output": "", "kind": "code"},
                                          {"text": t2, "code": "print(5)", "output": "5\n", "kind": "final"}],
          "time": {"model_s": 1, "sandbox_s": 1, "other_s": 0, "total_s": 2}, "tree": {"nodes": s1_nodes}}
    bare = {"id": "bare", "index": 3, "question": "q4", "gold": None, "answer": None, "correct": None}
    undecided = simple_record("undecided", 4, answer="x^2", gold="4", correct=None, grade="unknown")
    html = view(write_run(tmp_path / "run", [s2, mctsr, s1, bare, undecided]))
    load(browser, html)
    assert console_errors(browser) == []
    cards = {c.find_element("css selector", ".label").text.lower(): c.find_element("css selector", ".value").text
             for c in browser.find_elements("css selector", "#summary .card")}
    assert cards["accuracy"] == "75.0%" and cards["unknown grades"] == "1"
    assert "3 / 4 graded" in browser.find_element("id", "summary").text
    expected = {
        "s2": ({"root": 1, "step": 1, "max_depth": 1, "correct": 1, "unknown": 1, "no_answer": 1}, [0, 1, 3]),
        "mctsr": ({"root": 1, "wrong": 4, "correct": 1}, [0, 2, 4]),
        "s1": ({"root": 1, "error": 1, "step": 1, "correct": 1}, [0, 2, 3]),
        "bare": ({}, []),
    }
    for pid, (states, chosen) in expected.items():
        load(browser, html, tree_url(pid))
        drawn = [c.get_attribute("data-state") for c in circles(browser)]
        assert {s: drawn.count(s) for s in set(drawn)} == states, pid
        got = sorted(int(c.get_attribute("data-id")) for c in
                     browser.find_elements("css selector", "#tree-svg circle.chosen"))
        assert got == chosen, pid
        assert console_errors(browser) == []
    load(browser, html, tree_url("s2"))
    click(browser, browser.find_element("css selector", '#tree-svg circle[data-id="2"]'))
    assert "depth limit" in browser.find_element("id", "node-reason").text


def test_a_tree_of_thousands_of_nodes_is_drawn_whole(browser, tmp_path):
    n_nodes = 3000
    nodes = [node(0, -1, kind="root", text="", code="", visits=n_nodes)]
    for i in range(1, n_nodes):  # a bushy tree: 8 children per node, breadth first
        parent = (i - 1) // 8
        failed = i % 7 == 0
        nodes.append(node(i, parent, depth=nodes[parent]["depth"] + 1, visits=max(1, 50 - i // 60),
                          q=math.sin(i), kind="invalid" if failed else "code",
                          status="error" if failed else "ok",
                          reason=f"NameError: name 'v{i}' is not defined" if failed else None))
    rec = {"schema": 2, "id": "big", "index": 0, "question": "big", "gold": "1", "answer": None,
           "correct": False, "chosen": None, "tree": {"nodes": nodes}}
    html = view(write_run(tmp_path / "run", [rec]))
    load(browser, html, tree_url("big"))
    assert len(circles(browser)) == n_nodes
    browser.find_element("id", "node-search").send_keys("v2996'")  # 2996 = 7 * 428: a failed node's reason
    assert [c.get_attribute("data-id") for c in browser.find_elements("css selector", "#tree-svg circle.match")] \
        == ["2996"]
    browser.find_element("id", "collapse-all").click()
    assert len(circles(browser)) == 1 + 8 + 64
    assert console_errors(browser) == []
    load(browser, html)
    reasons = browser.find_element("id", "charts").text
    assert "NameError: name '…' is not defined" in reasons  # names folded: one group, not hundreds


def test_a_one_problem_file_opens_on_its_tree(browser, tmp_path):
    run = write_run(tmp_path / "run", [simple_record("a"), simple_record("b", 1)])
    html = view(run, "--problem", "b", "--out", tmp_path / "b.html")
    load(browser, html)
    assert browser.find_element("css selector", ".tree-head b").text == "b"
    assert len(circles(browser)) == 2
    browser.find_element("css selector", '.tree-head a[href="#/"]').click()
    assert [r.get_attribute("data-id") for r in browser.find_elements("css selector", "#problems tbody tr")] == ["b"]
    assert console_errors(browser) == []


# ---------------------------------------------------------------------- the command line (no browser)
def simple_record(pid, index=0, **kw):
    rec = {"schema": 2, "id": pid, "index": index, "question": "q", "gold": "1", "answer": "1", "correct": True,
           "chosen": 1, "tree": {"nodes": [node(0, -1, kind="root", text="", code=""),
                                          node(1, 0, depth=1, kind="final", answer="1", correct=True,
                                               terminal=True, terminal_kind="answer")]}}
    rec.update(kw)
    return rec


def embedded(html: Path) -> dict:
    text = html.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="rstar-data">') + len(
        '<script type="application/json" id="rstar-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_help_explains_the_command():
    r = rstar("view", "--help")
    assert r.returncode == 0
    for flag in ("RUN_DIR", "--problem", "--out", "--open", "no network"):
        assert flag in r.stdout
    assert "view" in rstar("--help").stdout


def test_missing_run_directory(tmp_path):
    assert_one_line_error(rstar("view", tmp_path / "nope"), "no such directory")


def test_directory_without_results(tmp_path):
    assert_one_line_error(rstar("view", tmp_path), "no results here")


def test_empty_results_file(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    assert_one_line_error(rstar("view", tmp_path), "empty")


def test_unknown_problem_id(tmp_path):
    write_run(tmp_path, [simple_record("a"), simple_record("b", 1)])
    assert_one_line_error(rstar("view", tmp_path, "--problem", "zzz"), "'zzz'", "a, b")
    assert not (tmp_path / "view.html").exists()


def test_newer_schema_is_refused(tmp_path):
    write_run(tmp_path, [simple_record("a", schema=3)])
    assert_one_line_error(rstar("view", tmp_path), "schema 3")


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    write_run(tmp_path, [simple_record("a"), simple_record("b", 1)])
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(simple_record("c", 2))[:40])
    r = rstar("view", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "incomplete last line" in r.stderr
    data = embedded(Path(r.stdout.strip()))
    assert [p["id"] for p in data["problems"]] == ["a", "b"]


def test_problem_and_out_options(tmp_path):
    write_run(tmp_path / "run", [simple_record("a"), simple_record("b", 1)])
    out = tmp_path / "b.html"
    r = rstar("view", tmp_path / "run", "--problem", "b", "--out", out)
    assert r.returncode == 0 and r.stdout.strip() == str(out)
    data = embedded(out)
    assert [p["id"] for p in data["problems"]] == ["b"] and data["focus"] == "b"
    assert not (tmp_path / "run" / "view.html").exists()
    assert_one_line_error(rstar("view", tmp_path / "run", "--out", tmp_path / "no" / "dir" / "x.html"),
                          "no such directory")


def test_open_hands_the_file_to_the_browser(tmp_path):
    """--open goes through Python's webbrowser, which honours $BROWSER: here a script that records its argument."""
    write_run(tmp_path / "run", [simple_record("a")])
    seen = tmp_path / "opened.txt"
    fake = tmp_path / "fake-browser"
    fake.write_text(f"#!/bin/sh\necho \"$1\" > {seen}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "BROWSER": str(fake)}
    r = rstar("view", tmp_path / "run", "--open", env=env)
    assert r.returncode == 0, r.stderr
    assert seen.read_text().strip() == (tmp_path / "run" / "view.html").resolve().as_uri()


def test_the_file_needs_nothing_outside_it(tmp_path):
    html = view(write_run(tmp_path, [simple_record("a")]))
    text = html.read_text(encoding="utf-8")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and " src=" not in text and "<link" not in text
    assert "default-src 'none'" in text


# ---------------------------------------------------------------------- the data side
def test_wilson_interval_matches_known_values():
    from rstar.view.data import wilson

    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2))  # 0.2775
    lo, hi = wilson(1, 2)
    assert (lo, hi) == (pytest.approx(0.0945, abs=1e-4), pytest.approx(0.9055, abs=1e-4))
    assert wilson(0, 0) is None


def test_embedded_json_cannot_close_its_script_element():
    from rstar.view.page import embed_json

    text = embed_json({"a": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


def test_non_finite_numbers_do_not_break_the_page(tmp_path):
    rec = simple_record("a")
    rec["tree"]["nodes"][1]["prior"] = float("inf")
    rec["tree"]["nodes"][1]["q"] = float("nan")
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + "\n")  # Python writes NaN / Infinity
    data = embedded(view(tmp_path))
    n = data["problems"][0]["tree"][1]
    assert "prior" not in n and "q" not in n and n["state"] == "correct"

