"""The elbo loss weighting against a numpy reference, and eval/nll_bound's estimator: exactly
uniform masked counts, log V for a model that knows nothing, and unbiased for a model whose
loss depends on how much it sees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax.training.bound import bound_spec, bound_sums, stratum_counts
from mlm_jax.training.weighting import loss_weights, weighted_loss
from tests.test_masking import MASK, SPECIAL, VOCAB, make_spec


def numpy_cross_entropy(logits, targets):
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def random_predictions(rng, rows=16, k=12, vocab=37):
    logits = rng.normal(0, 3, (rows, k, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, (rows, k))
    selected = rng.integers(0, k + 1, rows)  # some rows predict nothing
    weights = (np.arange(k) < selected[:, None]).astype(np.float32)
    maskable = selected + rng.integers(0, 40, rows)
    return logits, targets, weights, maskable, selected


def test_elbo_equals_a_numpy_reference_on_random_logits():
    """sum_i (n_i / m_i) sum_k CE_ik / sum_{i: m_i > 0} n_i, in float64 numpy."""
    rng = np.random.default_rng(0)
    logits, targets, weights, n, m = random_predictions(rng)
    ce = numpy_cross_entropy(logits, targets)
    rows = m > 0
    expected = sum((n[i] / m[i]) * ce[i, : m[i]].sum() for i in np.flatnonzero(rows))
    expected /= n[rows].sum()
    w, tokens = loss_weights("elbo", weights, n, m)
    loss, sums = weighted_loss(jnp.asarray(logits), jnp.asarray(targets), w, tokens)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-6)
    np.testing.assert_allclose(float(sums["objective_tokens"]), n[rows].sum())


def test_mean_weighting_is_the_mean_over_predictions():
    rng = np.random.default_rng(1)
    logits, targets, weights, n, m = random_predictions(rng)
    ce = numpy_cross_entropy(logits, targets)
    loss, _ = weighted_loss(logits, targets, *loss_weights("mean", weights, n, m))
    np.testing.assert_allclose(float(loss), (ce * weights).sum() / weights.sum(), rtol=2e-6)


def test_elbo_of_a_full_row_at_rate_one_is_the_mean():
    """At t = 1 (every eligible token predicted) the 1/t weight is 1: elbo = mean."""
    rng = np.random.default_rng(2)
    logits, targets, _, _, _ = random_predictions(rng, rows=4, k=8)
    weights, n = np.ones((4, 8), np.float32), np.full(4, 8)
    elbo, _ = weighted_loss(logits, targets, *loss_weights("elbo", weights, n, n))
    mean, _ = weighted_loss(logits, targets, *loss_weights("mean", weights, n, n))
    np.testing.assert_allclose(float(elbo), float(mean), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 126, 510])
@pytest.mark.parametrize("strata", [1, 4, 8])
def test_stratum_counts_are_exactly_uniform_on_one_to_n(n, strata):
    """Over a fine grid of offsets u and all strata, every m in 1..n is hit equally often
    (up to one grid cell per stratum boundary)."""
    grid = 8192
    u = (np.arange(grid) + 0.5) / grid
    counts = np.concatenate(
        [np.asarray(stratum_counts(jnp.asarray(u, jnp.float32), np.full(grid, n), s, strata))
         for s in range(strata)]
    )  # fmt: skip
    assert counts.min() >= 1 and counts.max() <= n
    hits = np.bincount(counts, minlength=n + 1)[1:]
    np.testing.assert_allclose(hits, grid * strata / n, atol=strata + 1)


def held_out_batch(rng, rows=64, length=32):
    tokens = rng.integers(len(SPECIAL), VOCAB, (rows, length))
    tokens[:, 0], tokens[:, -1] = 2, 3
    maskable = np.ones((rows, length), bool)
    maskable[: rows // 2, length // 2 :] = False  # rows of two lengths
    return {"tokens": jnp.asarray(tokens), "maskable": jnp.asarray(maskable)}


def spec_for_bound(length=32):
    return bound_spec(make_spec(seq_len=length), length)


def test_bound_of_a_model_that_knows_nothing_is_log_v():
    spec = spec_for_bound()
    batch = held_out_batch(np.random.default_rng(0))

    def uniform_logits(inputs, positions):
        return jnp.zeros((*positions.shape, VOCAB), jnp.float32)

    total, tokens = 0.0, 0.0
    for s in range(4):
        sums = bound_sums(uniform_logits, jax.random.key(0), batch, spec, s, 4)
        total, tokens = total + float(sums["bound_sum"]), tokens + float(sums["bound_tokens"])
    np.testing.assert_allclose(total / tokens, np.log(VOCAB), rtol=1e-6)


def test_bound_masks_with_mask_only_and_the_whole_row_fits():
    spec = spec_for_bound()
    assert (spec.strategy, spec.mask_prob, spec.random_prob) == ("uniform", 1.0, 0.0)
    assert spec.max_predictions == 30  # every token of a row but its [CLS] and [SEP]
    seen = {}

    def spy(inputs, positions):
        seen["inputs"], seen["positions"] = inputs, positions
        return jnp.zeros((*positions.shape, VOCAB), jnp.float32)

    batch = held_out_batch(np.random.default_rng(1))
    bound_sums(spy, jax.random.key(1), batch, spec, 3, 4)
    changed = np.asarray(seen["inputs"]) != np.asarray(batch["tokens"])
    assert (np.asarray(seen["inputs"])[changed] == MASK).all()


def test_bound_is_unbiased_for_a_model_whose_loss_depends_on_what_it_sees():
    """A fake model whose cross-entropy at every masked position is f(c) = log(e^(c/4) + V - 1),
    c = the row's [MASK] count (logits: c/4 on token 0, which is never a target). The bound's
    expectation is then sum_i sum_{m=1}^{n_i} f(m) / sum_i n_i; each row's stratified estimate
    moves less than (f(n_i) - f(1)) / S with its offset, so Hoeffding over the rows gives the
    tolerance (failure chance 1e-6)."""
    length, strata = 32, 4
    spec = spec_for_bound(length)
    batch = held_out_batch(np.random.default_rng(2), rows=512, length=length)

    def counting_logits(inputs, positions):
        c = (inputs == MASK).sum(-1).astype(jnp.float32)
        spike = jnp.zeros(VOCAB).at[0].set(1.0)
        return jnp.broadcast_to((c / 4)[:, None, None] * spike, (*positions.shape, VOCAB))

    f = lambda c: np.log(np.exp(c / 4) + VOCAB - 1)  # noqa: E731
    bound_fn = jax.jit(bound_sums, static_argnums=(0, 3, 5))
    nats, tokens = 0.0, 0.0
    for s in range(strata):
        sums = bound_fn(counting_logits, jax.random.key(7), batch, spec, s, strata)
        nats, tokens = nats + float(sums["bound_sum"]), tokens + float(sums["bound_tokens"])
    tokens_np, maskable = np.asarray(batch["tokens"]), np.asarray(batch["maskable"])
    n = (maskable & ~np.isin(tokens_np, SPECIAL)).sum(-1)
    assert tokens == strata * n.sum()
    expected = sum(f(np.arange(1, ni + 1)).sum() for ni in n) / n.sum()
    # The estimate is sum_i w_i X_i with w_i = n_i / sum n and X_i, a function of the row's
    # offset u_i alone, spanning at most (f(n_i) - f(1)) / S (f rises; each stratum's count
    # moves within its own 1/S of 1..n): Hoeffding, P(|error| > eps) <= 1e-6 at
    ranges = (n / n.sum()) * (f(n) - f(1)) / strata
    tolerance = np.sqrt(np.log(2 / 1e-6) * (ranges**2).sum() / 2)
    assert abs(nats / tokens - expected) < tolerance
