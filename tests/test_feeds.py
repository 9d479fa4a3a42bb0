"""The feeds of the one training loop (bucket, stream, packed), each checked against an independent
reference: the state reset by plain autodiff, packed log-probabilities by scoring strings one by one,
the loss of a packed step by summing strings scored alone, and the blocks' step order."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lstm_backends import ref_apply

from seqgen_jax.config import RunConfig
from seqgen_jax.data import build_dataset
from seqgen_jax.data.vocab import Ragged, Vocab
from seqgen_jax.feeds import blocks_of, resolve_feed
from seqgen_jax.lstm import scan as lstm_scan
from seqgen_jax.model import init_params
from seqgen_jax.parallel import Placement
from seqgen_jax.errors import UserError
from seqgen_jax.step import StepSpec, _global_norm, init_train_state, make_optimizer, step_fn
from seqgen_jax.stream import assign_rows, pack_rows, score_packed

CFG = RunConfig().override(**{"data.name": "brackets", "model.embed": 5, "model.hidden": 7, "model.layers": 2,
                              "model.vocab_size": 6})


def _ref_reset_recurrence(gx, w_hh, h0, c0, resets):
    H = h0.shape[-1]

    def step(carry, xs):
        h, c = carry
        g, r = xs
        h = jnp.where(r[:, None], 0.0, h)
        c = jnp.where(r[:, None], 0.0, c)
        z = g + h @ w_hh
        i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
        u, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
        c = f * c + i * u
        h = o * jnp.tanh(c)
        return (h, c), h

    (_, cT), hs = jax.lax.scan(step, (h0, c0), (gx, resets))
    return hs, cT


def test_reset_recurrence_matches_plain_autodiff():
    k = jax.random.split(jax.random.key(0), 5)
    T, B, H = 9, 3, 5
    gx = jax.random.normal(k[0], (T, B, 4 * H))
    w = jax.random.normal(k[1], (H, 4 * H)) * 0.4
    h0, c0 = jax.random.normal(k[2], (B, H)), jax.random.normal(k[3], (B, H))
    resets = jnp.zeros((T, B), bool).at[0, 1].set(True).at[4, 0].set(True).at[5, 0].set(True).at[7, 2].set(True)
    wh = jax.random.normal(k[4], (T, B, H))

    def loss(f):
        return lambda gx, w, h0, c0: jnp.sum(f(gx, w, h0, c0)[0] * wh) + jnp.sum(f(gx, w, h0, c0)[1] ** 2)

    ours = lambda gx, w, h0, c0: lstm_scan.recurrence(gx, w, h0, c0, resets=resets)  # noqa: E731
    ref = lambda gx, w, h0, c0: _ref_reset_recurrence(gx, w, h0, c0, resets)  # noqa: E731
    for a, b in zip(ours(gx, w, h0, c0), ref(gx, w, h0, c0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    g_ours = jax.grad(loss(ours), argnums=(0, 1, 2, 3))(gx, w, h0, c0)
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2, 3))(gx, w, h0, c0)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    # The reset matters: row 1 reset at step 0 gets no gradient into its initial state.
    assert float(jnp.abs(g_ours[2][1]).max()) == 0.0 and float(jnp.abs(g_ours[2][0]).max()) > 0


def _strings(n, seed=0):
    from seqgen_jax.data import Brackets

    return Brackets().strings(n, seed)


def test_packed_scores_equal_each_string_alone():
    vocab = Vocab.from_symbols("()")
    strings = _strings(60, 3)
    seqs = Ragged.from_strings(strings, vocab)
    params = init_params(CFG.model, 1)
    got = score_packed(params, CFG, seqs, B=4, chunk=8)  # windows cut strings; the state carries them
    for s, lp in zip(strings, got):
        row = jnp.asarray([[1] + vocab.encode(s).tolist() + [2]])
        logits, _, _ = ref_apply(params, row[:, :-1], jnp.zeros((2, 1, 7)), jnp.zeros((2, 1, 7)))
        want = float(jnp.take_along_axis(jax.nn.log_softmax(logits), row[:, 1:, None], -1).sum())
        assert lp == pytest.approx(want, abs=1e-6 * max(1.0, abs(want)), rel=1e-6)


def test_pack_rows_keeps_every_string_once_and_whole():
    vocab = Vocab.from_symbols("()")
    strings = _strings(500, 1)
    seqs = Ragged.from_strings(strings, vocab)
    order = np.random.default_rng(0).permutation(len(strings))
    B = 8
    lens = seqs.lengths[order] + 1  # `.start` and the symbols; the next `.start` stands for the `.end`
    _, row_len = assign_rows(lens, B)
    width = int(row_len.max()) + 3
    mat, longest, seq = pack_rows(seqs, order, B, width)
    assert longest == row_len.max() + 1 and row_len.sum() == lens.sum()
    # One `.end` per row, right after its last string; every other column of a string is its own.
    assert ((mat == 2).sum(axis=1) == 1).all()
    ends = np.argmax(mat == 2, axis=1)
    assert (mat[np.arange(B), ends + 1] == 0).all() and ((mat[:, :-1] != 0).sum(axis=1) == ends + 1).all()
    assert row_len.max() <= lens.sum() / B + lens.max()  # balanced: the documented bound
    got = []
    for r in range(B):
        toks = [t for t in mat[r] if t != 0]
        assert toks[0] == 1  # every row starts with a string's .start: no string is cut between rows
        text = "".join(vocab.i2w[t] if t > 3 else ("|" if t == 1 else "") for t in toks)
        got += [x for x in text.split("|") if x or True][1:]
    assert got == [strings[i] for i in seq]  # all of them, once
    assert sorted(seq.tolist()) == list(range(len(strings)))
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    assert all(np.all(np.diff(rank[seq[i:j]]) > 0) for i, j in _row_spans(mat))


def test_a_packed_step_is_the_mean_over_strings_scored_alone():
    """One packed step whose window holds whole strings: loss and gradient norm equal plain autodiff of
    the strings scored one by one (so `.start` targets and resets are right)."""
    vocab = Vocab.from_symbols("()")
    strings = ["()", "(())", "(()())", "()", "((()))"]
    seqs = Ragged.from_strings(strings, vocab)
    mat, _, _ = pack_rows(seqs, np.arange(5), 2, 24)
    cfg = CFG.override(**{"model.layers": 1})
    tx = make_optimizer(cfg, 100)
    state = init_train_state(cfg, tx)
    state["carry"] = (jnp.zeros((1, 2, 7)), jnp.zeros((1, 2, 7)))
    p0 = jax.tree.map(jnp.copy, state["params"])
    step = jax.jit(step_fn(cfg, tx, StepSpec(window=23, carry=True, packed=True)))
    _, m = step(state, jnp.asarray(mat), jnp.int32(0))

    def ref_loss(params):
        tot, n = 0.0, 0
        for s in strings:
            row = jnp.asarray([[1] + vocab.encode(s).tolist() + [2]])
            logits, _, _ = ref_apply(params, row[:, :-1], jnp.zeros((1, 1, 7)), jnp.zeros((1, 1, 7)))
            tot -= jnp.take_along_axis(jax.nn.log_softmax(logits), row[:, 1:, None], -1).sum()
            n += len(s) + 1
        return tot / n

    loss, grads = jax.value_and_grad(ref_loss)(p0)
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(m["grad_norm"]) == pytest.approx(float(_global_norm(grads)), rel=1e-4)


def test_blocks_cover_every_step_once_and_resume_mid_block():
    steps = [(f, np.flatnonzero(live) + f) for f, live in blocks_of(37, 8, 0)]
    assert np.concatenate([s for _, s in steps]).tolist() == list(range(37))
    resumed = np.concatenate([np.flatnonzero(live) + f for f, live in blocks_of(37, 8, 13)])
    assert resumed.tolist() == list(range(13, 37))


def test_bucket_feed_epoch_takes_every_batch_once():
    from seqgen_jax.buckets import BucketFeed

    cfg = CFG.override(**{"data.n_train": 700, "data.n_val": 50, "train.max_tokens": 300, "train.max_buckets": 4})
    ds = build_dataset(cfg.data)
    place = Placement()
    feed = BucketFeed(cfg, ds, place, K=3)
    rows = []
    n_steps = 0
    for block in feed.blocks(epoch=2):
        b = [i for i, d in enumerate(feed.split.data) if d is block.data][0]
        xs = np.asarray(block.xs)
        for k in np.flatnonzero(block.live_np):
            n_steps += 1
            rows += [int(feed.split.members[b][i]) for i in xs[k] if i < len(feed.split.members[b])]
    assert n_steps == feed.steps_in(2)
    assert sorted(rows) == list(range(700))  # every string exactly once per epoch
    again = [np.asarray(b.xs).tolist() for b in feed.blocks(epoch=2)]
    assert again == [np.asarray(b.xs).tolist() for b in feed.blocks(epoch=2)]  # seeded
    late = list(feed.blocks(epoch=2, start=5))
    assert sum(b.n_live for b in late) == feed.steps_in(2) - 5


def test_feed_choice_refuses_what_a_dataset_cannot_use():
    assert resolve_feed("auto", "text", carry_state=True) == "stream"
    assert resolve_feed("bucket", "language", carry_state=True) == "bucket"
    assert resolve_feed("auto", "imdb", carry_state=True) == "stream"
    for feed, kind in (("packed", "text"), ("bucket", "text"), ("stream", "language"), ("zip", "language")):
        with pytest.raises(UserError):
            resolve_feed(feed, kind, carry_state=True)


def _row_spans(mat):
    """[(first, last + 1)] positions in the row-major string order of each row's strings."""
    counts = (mat == 1).sum(axis=1)
    ends = np.cumsum(counts)
    return list(zip(ends - counts, ends))


@pytest.mark.parametrize("max_tokens, chunk, grows", [(60_000, None, True), (320, None, False), (60_000, 16, False)])
def test_packed_windows_grow_to_the_budget_only_when_the_rows_cannot(max_tokens, chunk, grows):
    """With too few strings for the budget's rows, the default window doubles while the step stays
    within --max-tokens and the window within the rows; a --chunk the user set is kept."""
    from seqgen_jax.parallel import Placement
    from seqgen_jax.stream import WindowFeed

    cfg = CFG.override(**{"data.n_train": 400, "data.n_val": 50, "train.max_tokens": max_tokens, "data.chunk": chunk})
    ds = build_dataset(cfg.data)
    feed = WindowFeed.packed(cfg, ds, Placement(), K=2)
    lens = ds.train.lengths + 1
    step = feed.B * feed.chunk
    assert feed.B <= max(1, int(lens.sum() // lens.max()))  # no more rows than the longest string allows
    assert (feed.B < max_tokens // 64) == (chunk is None and grows) or chunk  # the rows could not fill it
    if grows:
        assert feed.chunk > 32 and feed.chunk & (feed.chunk - 1) == 0 and step <= max_tokens
        assert 2 * step > max_tokens or feed.cols == feed.chunk + 1  # it cannot double again
    else:
        assert feed.chunk == (chunk or 32)
    tokens = sum(int(np.asarray(b.live_np).sum()) for b in feed.blocks(epoch=0)) * step
    assert tokens >= lens.sum()  # every string's tokens fit in the epoch's windows
