import numpy as np
from hypothesis import given, settings, strategies as st

from seqgen_jax.buckets import epoch_order, make_rows, pad_rows, plan_buckets
from seqgen_jax.data.vocab import END_ID, PAD_ID, START_ID, Ragged


def _ragged(lengths):
    flat = np.concatenate([np.full(L, 4 + (i % 3), np.int32) for i, L in enumerate(lengths)]) if lengths else np.zeros(0, np.int32)
    return Ragged(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=400),
       budget=st.integers(3, 5000), k=st.integers(1, 12), mult=st.sampled_from([1, 2, 4]), seed=st.integers(0, 99))
def test_each_row_once_per_epoch_and_within_budget(lengths, budget, k, mult, seed):
    rows = make_rows(_ragged(lengths))
    T = rows.lengths - 1
    plan = plan_buckets(T, budget, k, multiple=mult)
    seen = []
    for b, idx in epoch_order(plan, seed, 0):
        bk = plan.buckets[b]
        assert len(idx) == bk.batch and bk.batch % mult == 0
        members = plan.members(b)
        real = idx[idx < len(members)]
        assert (T[members[real]] <= bk.length).all()
        if bk.length <= budget // mult:  # rows longer than the budget get their own bucket
            assert bk.batch * bk.length <= budget
        seen.extend(members[real].tolist())
    assert sorted(seen) == list(range(len(lengths)))


def test_epoch_order_is_seeded_and_shuffled():
    rows = make_rows(_ragged(list(range(1, 200))))
    plan = plan_buckets(rows.lengths - 1, 400, 4)
    a = [(b, i.tolist()) for b, i in epoch_order(plan, 1, 3)]
    assert a == [(b, i.tolist()) for b, i in epoch_order(plan, 1, 3)]
    assert a != [(b, i.tolist()) for b, i in epoch_order(plan, 1, 4)]


def test_rows_have_markers_and_padding():
    r = make_rows(_ragged([2, 0]))
    assert r[0].tolist() == [START_ID, 4, 4, END_ID] and r[1].tolist() == [START_ID, END_ID]
    m = pad_rows(r, np.array([1, 0]), 6)
    assert m.tolist() == [[START_ID, END_ID] + [PAD_ID] * 4, [START_ID, 4, 4, END_ID, PAD_ID, PAD_ID], [PAD_ID] * 6]


def test_chunked_rows_predict_every_symbol_once():
    seqs = _ragged([10, 3])
    rows = make_rows(seqs, chunk=4)
    assert (rows.lengths - 1 <= 4).all()
    # Predictions (targets) across windows = each full row's targets exactly once.
    targets = np.concatenate([rows[i][1:] for i in range(len(rows))])
    full = make_rows(seqs)
    assert targets.tolist() == np.concatenate([full[i][1:] for i in range(len(full))]).tolist()


def test_padding_under_a_quarter_on_course_datasets():
    from seqgen_jax.data import get_language
    from seqgen_jax.data.vocab import Vocab

    for name in ("ndfa", "brackets", "toy"):
        lang = get_language(name)
        rows = make_rows(Ragged.from_strings(lang.strings(150_000, 0), Vocab.from_symbols(lang.alphabet)))
        for budget in (10_000, 60_000):
            plan = plan_buckets(rows.lengths - 1, budget, 12)
            assert plan.padding_fraction() < 0.25, (name, budget, plan.describe())
