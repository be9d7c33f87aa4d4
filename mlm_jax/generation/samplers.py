"""Iterative unmasking: an MLM filling a row of [MASK]s over S steps, as masked diffusion samples.

Two samplers over the same loop, both pure JAX on (logits_fn, params, tokens): `logits_fn(params,
tokens_BxL)` gives float32 logits_BxLxV in which every token that must never be written ([MASK],
the other special tokens, spare rows of the vocabulary) is already -inf.

- `none` (MDLM's ancestral sampler, Sahoo et al. 2024, `ddpm_cache`): time runs down a grid
  t_0 = 1 > ... > t_S = eps (eps = 1e-5, as MDLM). From t to s < t each position still masked is
  unmasked with probability (t - s) / t, to a token drawn from the model's distribution; a
  written token is never remasked. So a position is still masked after step i with probability
  t_i. A final pass writes the model's most likely token into any leftover (MDLM's
  noise_removal; with eps = 1e-5 that is a few positions in 10^4 steps).
- `low_confidence` / `random` (LLaDA, Nie et al. 2025, generate.py with one block): each of the
  S steps predicts every masked position (a draw, or the argmax at temperature 0) and commits
  the `count[j]` of them with the highest confidence (the untempered probability of the drawn
  token; `random`: a uniform number), the rest stay masked. count = commit_schedule(M, S): M // S
  per step, the first M % S steps one more, so the counts sum to M, the masked positions.

Every random draw uses the row's own key (fold_in(key, row), then the step), so a row's sample
depends on the seed and its index, not on how many rows are drawn together. Draws are float32
(LLaDA draws its Gumbel noise in float64; JAX on CPU and TPU runs float32 unless x64 is on).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

REMASKINGS = ("none", "low_confidence", "random")
EPS = 1e-5  # MDLM's last time on the grid


def time_grid(steps: int, eps: float = EPS) -> np.ndarray:
    """float64 [steps + 1]: 1 down to eps, evenly spaced (MDLM's linspace(1, eps, steps + 1))."""
    return np.linspace(1.0, eps, steps + 1)


def commit_schedule(num_masked: int, steps: int) -> np.ndarray:
    """int32 [steps]: LLaDA's get_num_transfer_tokens for one block (sums to num_masked)."""
    base, extra = divmod(int(num_masked), int(steps))
    return (base + (np.arange(steps) < extra)).astype(np.int32)


def _row_keys(keys_B, step):
    """Two keys per row for this step: (draw the tokens, the unmask/confidence numbers)."""
    keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, step)))(keys_B)
    return keys[:, 0], keys[:, 1]


def draw(keys_B, logits_BxLxV, temperature: float):
    """A token per position from softmax(logits / temperature); temperature 0: the argmax."""
    if temperature == 0:
        return jnp.argmax(logits_BxLxV, axis=-1).astype(jnp.int32)
    draw_row = lambda k, lg: jax.random.categorical(k, lg / temperature, axis=-1)  # noqa: E731
    return jax.vmap(draw_row)(keys_B, logits_BxLxV).astype(jnp.int32)


def _uniform(keys_B, length: int):
    return jax.vmap(lambda k: jax.random.uniform(k, (length,)))(keys_B)


def ancestral_step(logits_BxLxV, tokens_BxL, mask_id, t, s, keys_B, step, temperature=1.0):
    """One MDLM step from time t to s < t: each masked position is unmasked with probability
    (t - s) / t to a token drawn from the model."""
    draw_keys, unmask_keys = _row_keys(keys_B, step)
    x0_BxL = draw(draw_keys, logits_BxLxV, temperature)
    unmask_BxL = _uniform(unmask_keys, tokens_BxL.shape[1]) < (t - s) / t
    return jnp.where((tokens_BxL == mask_id) & unmask_BxL, x0_BxL, tokens_BxL)


def confidence_step(
    logits_BxLxV,
    tokens_BxL,
    mask_id,
    count,
    keys_B,
    step,
    temperature=1.0,
    remasking="low_confidence",
):
    """One LLaDA step: predict every masked position, commit the `count` most confident."""
    draw_keys, confidence_keys = _row_keys(keys_B, step)
    x0_BxL = draw(draw_keys, logits_BxLxV, temperature)
    masked_BxL = tokens_BxL == mask_id
    if remasking == "random":
        confidence_BxL = _uniform(confidence_keys, tokens_BxL.shape[1])
    else:
        probs_BxLxV = jax.nn.softmax(logits_BxLxV, axis=-1)
        confidence_BxL = jnp.take_along_axis(probs_BxLxV, x0_BxL[..., None], axis=-1)[..., 0]
    confidence_BxL = jnp.where(masked_BxL, confidence_BxL, -jnp.inf)
    order_BxL = jnp.argsort(-confidence_BxL, axis=-1, stable=True)  # most confident first
    rank_BxL = jnp.argsort(order_BxL, axis=-1, stable=True)
    return jnp.where(masked_BxL & (rank_BxL < count), x0_BxL, tokens_BxL)


def fill_leftovers(logits_BxLxV, tokens_BxL, mask_id):
    """The most likely token wherever [MASK] is left."""
    best_BxL = jnp.argmax(logits_BxLxV, axis=-1).astype(tokens_BxL.dtype)
    return jnp.where(tokens_BxL == mask_id, best_BxL, tokens_BxL)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("remasking", "temperature"))
def _loop(
    logits_fn, params, tokens_BxL, keys_B, mask_id, times_S1, counts_S, *, remasking, temperature
):
    def body(i, tokens):
        logits = logits_fn(params, tokens)
        if remasking == "none":
            return ancestral_step(
                logits, tokens, mask_id, times_S1[i], times_S1[i + 1], keys_B, i, temperature
            )
        return confidence_step(
            logits, tokens, mask_id, counts_S[i], keys_B, i, temperature, remasking
        )

    tokens_BxL = jax.lax.fori_loop(0, counts_S.shape[0], body, tokens_BxL)
    return fill_leftovers(logits_fn(params, tokens_BxL), tokens_BxL, mask_id)


def sample(
    logits_fn,
    params,
    tokens_BxL: np.ndarray,
    mask_id: int,
    *,
    steps: int,
    seed: int,
    remasking: str = "none",
    temperature: float = 1.0,
) -> np.ndarray:
    """tokens_BxL with every [MASK] filled in `steps` steps (module doc). Every row must hold
    the same number of [MASK]s (the LLaDA schedule is per row). logits_fn is a static argument
    of the jitted loop: the same function object reuses its compilation."""
    tokens_BxL = np.asarray(tokens_BxL, np.int32)
    masked_B = (tokens_BxL == mask_id).sum(axis=1)
    if len(set(masked_B.tolist())) > 1:
        raise ValueError(f"rows hold different numbers of [MASK]: {sorted(set(masked_B))}")
    key = jax.random.key(seed)
    keys_B = jax.vmap(lambda row: jax.random.fold_in(key, row))(jnp.arange(len(tokens_BxL)))
    times = jnp.asarray(time_grid(steps), jnp.float32)
    counts = jnp.asarray(commit_schedule(int(masked_B[0]), steps))
    out = _loop(
        logits_fn,
        params,
        jnp.asarray(tokens_BxL),
        keys_B,
        mask_id,
        times,
        counts,
        remasking=remasking,
        temperature=float(temperature),
    )
    return np.asarray(out)
