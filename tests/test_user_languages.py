"""`pcfg:` and `pfsa:` files: exact probabilities against brute-force enumeration of derivations and
paths, entropy floors against enumeration or closed forms, Earley continuations, and every bad-input
message (file and line named)."""
import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest

from seqgen_jax.data import build_dataset, get_language
from seqgen_jax.config import DataConfig
from seqgen_jax.errors import UserError

from conftest import run_cli


def _write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


# ---------------------------------------------------------------- independent references
def enumerate_pcfg(rules: dict, start: str, max_len: int, min_p: float = 1e-14) -> dict:
    """String -> probability, summing every leftmost derivation whose yield has <= max_len tokens.
    Terminals are quoted strings in `rules`' right-hand sides: ("'a'", "S")."""
    out = defaultdict(float)
    stack = [((start,), 1.0)]
    while stack:
        form, p = stack.pop()
        k = next((i for i, x in enumerate(form) if not x.startswith("'")), None)
        n_terms = sum(x.startswith("'") for x in form)
        if n_terms > max_len or p < min_p:
            continue
        if k is None:
            out[tuple(x[1:-1] for x in form)] += p
            continue
        if len(form) > 3 * max_len + 3:  # no empty rules: a form never shrinks
            continue
        for rhs, q in rules[form[k]]:
            stack.append((form[:k] + rhs + form[k + 1:], p * q))
    return out


AMB = {"S": [(("S", "S"), 0.3), (("'x'",), 0.7)]}
WORDS = {
    "S": [(("NP", "VP"), 1.0)],
    "NP": [(("'the'", "N"), 0.7), (("'a'", "N"), 0.3)],
    "N": [(("'cat'",), 0.5), (("'dog'",), 0.3), (("'big'", "N"), 0.2)],
    "VP": [(("'runs'",), 0.6), (("'sees'", "NP"), 0.4)],
}
AMB_TEXT = "S -> S S [0.3] | 'x' [0.7]\n"
WORDS_TEXT = """# a tiny English
S -> NP VP [1.0]
NP -> 'the' N [0.7] | 'a' N [0.3]
N -> 'cat' [0.5] | 'dog' [0.3]
   | 'big' N [0.2]
VP -> 'runs' [0.6] | 'sees' NP [0.4]
"""
# Ambiguous with unit rules and a rule longer than 2: A -> B, B -> A-free chains, S -> 'a' S 'b' S.
MIXED = {"S": [(("A",), 0.3), (("'a'", "S", "'b'", "S"), 0.2), (("'c'",), 0.5)],
         "A": [(("B",), 0.5), (("'c'",), 0.5)], "B": [(("'c'",), 0.6), (("'a'", "'c'"), 0.4)]}
MIXED_TEXT = """S -> A [0.3] | 'a' S 'b' S [0.2] | 'c' [0.5]
A -> B [0.5] | 'c' [0.5]
B -> 'c' [0.6] | 'a' 'c' [0.4]
"""


@pytest.mark.parametrize("text,rules,max_len", [(AMB_TEXT, AMB, 5), (WORDS_TEXT, WORDS, 7), (MIXED_TEXT, MIXED, 9)])
def test_pcfg_log_prob_sums_every_derivation(tmp_path, text, rules, max_len):
    lang = get_language("pcfg:" + _write(tmp_path, "g.cfg", text))
    truth = enumerate_pcfg(rules, "S", max_len)
    strings = [lang.render(t) for t in truth]
    got = np.exp(lang.log_probs(strings))
    want = np.array(list(truth.values()))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    # Strings that are not sentences: a wrong token, a cut-off sentence, an unknown token.
    bad = ["b", lang.render(["x", "y"]), ""] if lang.char else ["the cat", "the cat runs runs", "the fish runs"]
    assert np.all(np.isneginf(lang.log_probs(bad)))
    # x^n of the ambiguous grammar: Catalan(n-1) derivations, each 0.3^(n-1) 0.7^n.
    if rules is AMB:
        for n in (1, 5, 12, 40):
            cat = math.comb(2 * (n - 1), n - 1) // n
            assert lang.log_prob("x" * n) == pytest.approx(math.log(cat) + (n - 1) * math.log(0.3) + n * math.log(0.7),
                                                           rel=1e-10)


def test_pcfg_sampling_matches_probabilities_and_earley_continuations(tmp_path):
    lang = get_language("pcfg:" + _write(tmp_path, "g.cfg", WORDS_TEXT))
    assert not lang.char and lang.alphabet == ("a", "big", "cat", "dog", "runs", "sees", "the")
    rng = random.Random(0)
    counts = defaultdict(int)
    n = 40_000
    for _ in range(n):
        counts[lang.sample(rng)] += 1
    top = sorted(counts, key=counts.get, reverse=True)[:5]
    p = np.exp(lang.log_probs(top))
    emp = np.array([counts[s] / n for s in top])
    assert np.all(np.abs(emp - p) < 4 * np.sqrt(p * (1 - p) / n))
    table = lang.prefix_table("the big dog sees a cat")
    assert table[0] == (frozenset({"the", "a"}), False)
    assert table[2] == (frozenset({"big", "cat", "dog"}), False)
    assert table[3] == (frozenset({"runs", "sees"}), False)
    assert table[-1] == (frozenset(), True)


def test_pcfg_entropy_exact_for_unambiguous_and_estimated_for_ambiguous(tmp_path):
    anbn = get_language("pcfg:" + _write(tmp_path, "a.cfg", "S -> 'a' S 'b' [0.6] | 'a' 'b' [0.4]\n"))
    e = anbn.entropy()
    # a^n b^n with P = 0.4 * 0.6^(n-1): closed-form entropy and mean 2n + 1 tokens.
    h = -sum(0.4 * 0.6 ** (n - 1) * math.log2(0.4 * 0.6 ** (n - 1)) for n in range(1, 400))
    toks = sum(0.4 * 0.6 ** (n - 1) * (2 * n + 1) for n in range(1, 400))
    assert e.exact and e.bits_per_string == pytest.approx(h, rel=1e-9) and e.tokens_per_string == pytest.approx(toks)
    amb = get_language("pcfg:" + _write(tmp_path, "b.cfg", AMB_TEXT))
    e2 = amb.entropy()
    assert not e2.exact and e2.stderr_bits_per_token > 0
    # Enumerated: x^n with Catalan-many derivations.
    ps = [math.exp(math.lgamma(2 * n - 1) - 2 * math.lgamma(n) - math.log(n) + (n - 1) * math.log(0.3)
                   + n * math.log(0.7)) for n in range(1, 2000)]
    h2 = -sum(p * math.log2(p) for p in ps if p > 0)
    t2 = sum(p * (n + 1) for n, p in enumerate(ps, 1))
    assert abs(e2.bits_per_token - h2 / t2) < 4 * e2.stderr_bits_per_token
    assert amb.derivation_entropy()[0] > h2 + 0.1  # derivation entropy would overstate the floor


ND = {"start": "q0", "states": {
    "q0": {"final": 0.5, "arcs": [["a", "q1", 0.25], ["a", "q0", 0.125], ["b", "q0", 0.125]]},
    "q1": {"final": 0.5, "arcs": [["b", "q0", 0.5]]}}}
DET = {"start": "s", "states": {
    "s": {"final": 0.0, "arcs": [["the", "n", 0.7], ["a", "n", 0.3]]},
    "n": {"final": 0.0, "arcs": [["cat", "v", 0.6], ["big", "n", 0.4]]},
    "v": {"final": 0.5, "arcs": [["runs", "v", 0.5]]}}}


def enumerate_paths(doc: dict, max_len: int) -> dict:
    """String -> probability summed over every path, level by level (paths merged per (string, state))."""
    out = defaultdict(float)
    level = {((), doc["start"]): 1.0}
    for _ in range(max_len + 1):
        nxt = defaultdict(float)
        for (toks, q), p in level.items():
            st = doc["states"][q]
            out[toks] += p * st["final"]
            for x, r, pa in st["arcs"]:
                nxt[(toks + (x,), r)] += p * pa
        level = nxt
    return out


@pytest.mark.parametrize("doc", [ND, DET])
def test_pfsa_forward_algorithm_and_floor_against_enumeration(tmp_path, doc):
    lang = get_language("pfsa:" + _write(tmp_path, "a.json", json.dumps(doc)))
    truth = {k: v for k, v in enumerate_paths(doc, 12).items() if v > 0}
    strings = [lang.render(t) for t in truth]
    np.testing.assert_allclose(np.exp([lang.log_prob(s) for s in strings]), list(truth.values()), rtol=1e-9)
    pmf, exact = lang.length_pmf(12)
    by_len = np.zeros(13)
    for t, p in truth.items():
        by_len[len(t)] += p
    assert exact and np.allclose(pmf[:12], by_len[:12], atol=1e-12)
    e = lang.entropy()
    if doc is DET:
        long = {k: v for k, v in enumerate_paths(doc, 80).items() if v > 0}
        h = -sum(p * math.log2(p) for p in long.values())
        t = sum(p * (len(k) + 1) for k, p in long.items())
        assert e.exact and e.bits_per_string == pytest.approx(h, rel=1e-6) and e.tokens_per_string == pytest.approx(t, rel=1e-6)
        assert lang.prefix_table("the big cat")[1] == (frozenset({"cat", "big"}), False)
        assert lang.log_prob("the cat cat") == -math.inf
    else:
        long = {k: v for k, v in enumerate_paths(doc, 18).items() if v > 0}
        h = -sum(p * math.log2(p) for p in long.values())
        t = sum(p * (len(k) + 1) for k, p in long.items())
        assert not e.exact and abs(e.bits_per_token - h / t) < 4 * e.stderr_bits_per_token
        assert lang.prefix_table("ab")[0] == (frozenset({"a", "b"}), True)


# ---------------------------------------------------------------- bad input: one line, file and line
@pytest.mark.parametrize("text,msg", [
    ("S -> 'a' S [0.5] | 'b' [0.4]\n", r"line 1: the probabilities of S's rules sum to 0.9"),
    ("S -> 'a' [1.0]\nT => 'b' [1.0]\n", r"line 2: cannot parse"),
    ("S -> 'a' B [1.0]\n", r"line 1: nonterminal B is used but has no rules"),
    ("S -> 'a' [1.0]\n\nT -> 'b' [1.0]\n", r"line 3: nonterminal T cannot be reached"),
    ("S -> S S [0.6] | 'a' [0.4]\n", r"does not terminate with probability 1 \(spectral radius"),
    ("S -> S 'a' [1.0]\n", r"the language is empty"),
    ("S -> 'a' 'b'\n", r"line 1: .* has no probability"),
    ("S -> 'a [1.0]\n", r"line 1: cannot read"),
    ("S -> [1.0]\n", r"line 1: an empty right-hand side"),
    ("# only a comment\n", r"no rules"),
])
def test_bad_grammars(tmp_path, text, msg):
    with pytest.raises(UserError, match=msg):
        get_language("pcfg:" + _write(tmp_path, "g.cfg", text))


@pytest.mark.parametrize("doc,msg", [
    ({"start": "q", "states": {"q": {"final": 0.5, "arcs": [["a", "q", 0.4]]}}}, r"sum to 0.9"),
    ({"start": "q", "states": {"q": {"final": 0.5, "arcs": [["a", "r", 0.5]]}}}, r"undefined state 'r'"),
    ({"start": "q", "states": {"q": {"final": 1.0, "arcs": []}, "r": {"final": 1.0, "arcs": []}}}, r"cannot be reached"),
    ({"start": "q", "states": {"q": {"final": 0.0, "arcs": [["a", "q", 1.0]]}}}, r"the language is empty"),
    ({"start": "q", "states": {"q": {"final": 0.5, "arcs": [["a", "r", 0.5]]},
                               "r": {"final": 0.0, "arcs": [["b", "r", 1.0]]}}}, r"does not stop with probability 1"),
    ({"start": "x", "states": {"q": {"final": 1.0, "arcs": []}}}, r"start state 'x'"),
    ([1, 2], r"expected"),
    ({"start": "q", "states": {"q": {"final": 1.0, "arcs": []}}}, r"no arcs"),
])
def test_bad_automata(tmp_path, doc, msg):
    with pytest.raises(UserError, match=msg):
        get_language("pfsa:" + _write(tmp_path, "a.json", json.dumps(doc)))
    with pytest.raises(UserError, match=r"line 1: not valid JSON"):
        get_language("pfsa:" + _write(tmp_path, "b.json", "{oops"))


def test_cli_data_score_and_bad_score_file(tmp_path):
    g = _write(tmp_path, "g.cfg", WORDS_TEXT)
    rc, out, err = run_cli("data", f"pcfg:{g}", "--stats", "--json", "--n", "2000")
    assert rc == 0, err
    st = json.loads(out)
    assert st["exact"] is True and st["alphabet"] == "a big cat dog runs sees the"
    lines = _write(tmp_path, "lines.txt", "the cat runs\na dog sees the big cat\nthe runs\n")
    rc, out, err = run_cli("score", f"pcfg:{g}", lines, "--json")
    assert rc == 0, err
    rows = json.loads(out)["lines"]
    assert [r["valid"] for r in rows] == [True, True, False]
    assert rows[0]["log2_prob"] == pytest.approx(math.log2(0.7 * 0.5 * 0.6))
    bad = _write(tmp_path, "bad.txt", "the cat runs\nthe fish runs\n")
    rc, out, err = run_cli("score", f"pcfg:{g}", bad)
    assert rc == 2 and "line 2" in err and "'fish'" in err and len(err.strip().splitlines()) == 1


def test_pcfg_dataset_trains_and_evaluates_end_to_end(tmp_path):
    g = _write(tmp_path, "g.cfg", WORDS_TEXT)
    run = tmp_path / "run"
    rc, out, err = run_cli("train", f"pcfg:{g}", "--run-dir", str(run), "--epochs", "3", "--n-train", "3000",
                           "--n-val", "300", "--n-test", "300", "--hidden", "32", "--max-tokens", "400")
    assert rc == 0, err
    rc, out, err = run_cli("eval", str(run), "--json", "--samples", "200", "--temperatures", "1")
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["floor_exact"] is True
    assert ev["kl_bits_per_token"] == pytest.approx(ev["ce_bits_per_token"] - ev["entropy_bits_per_token"])
    assert ev["valid_rate"]["1.0"] > 0.5 and 0.5 < ev["prefix_valid_rate"] <= 1.0
    ds = build_dataset(DataConfig(name=f"pcfg:{g}", n_train=10, n_val=10, n_test=10))
    assert all(len(s.split(" ")) >= 3 for s in ds.strings("train"))  # word tokens, space-joined
