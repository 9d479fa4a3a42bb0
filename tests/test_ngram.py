import math

import pytest

from seqgen_jax.data import get_language
from seqgen_jax.data.ngram import NGram

COURSE = {  # the course's table, orders 0-5, bits per stream character
    "brackets": [1.374, 1.134, 1.134, 0.937, 0.937, 0.890],
    "ndfa": [3.457, 0.666, 0.294, 0.294, 0.294, 0.294],
    "toy": [4.196, 2.236, 0.974, 0.725, 0.639, 0.632],
}


@pytest.mark.parametrize("name", sorted(COURSE))
def test_reproduces_course_table(name):
    lang = get_language(name)
    train, test = lang.strings(150_000, 0), lang.strings(10_000, 1)
    for order, want in enumerate(COURSE[name]):
        got = NGram(train, order, alphabet=lang.alphabet).bits_per_symbol(test)
        tol = 0.02 if (name == "toy" and order >= 4) else 0.01
        assert abs(got - want) <= tol, (name, order, got, want)


def test_laplace_smoothing_and_unseen_contexts():
    m = NGram(["ab", "ab"], 1, alpha=0.01, alphabet="abc")
    # Stream "c|": 'c' after '|' was never seen (count 0 of 2), then '|' after the unseen context 'c'
    # is uniform over the 4 symbols a, b, c, |.
    want = (-math.log2(0.01 / (2 + 0.04)) + 2.0) / 2
    assert m.bits_per_symbol(["c"]) == pytest.approx(want, rel=1e-9)
