"""The pure steps a run jits: one optimizer update, and metric sums on one held-out batch.

`train_step(state, batch, tables) -> (state, metrics)`: mask on device (the strategy's fields and
the host-prepared tables of masking/strategy.py, one dict for every strategy), forward,
backward (microbatches summed exactly), AdamW. Randomness comes only from keys folded from the
config's seed and the step, so a run is a function of (config, code, data). training/trainer.py
jits these over the mesh.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mlm_jax import masking
from mlm_jax.data.batch import Batch
from mlm_jax.masking.rates import masking_ratio, row_rates
from mlm_jax.training import optim
from mlm_jax.training.loss import mlm_loss
from mlm_jax.training.spec import RunSpec
from mlm_jax.training.weighting import loss_weights, weighted_loss_sums

# Independent random streams of a run, all folded from the seed.
INIT, MASK, DROPOUT, EVAL = 1, 2, 3, 4
SUM_KEYS = ("loss_sum", "correct_sum", "weight_sum")  # sums combine exactly across pieces
OBJECTIVE_KEYS = ("objective_sum", "objective_tokens")  # the weighted loss (weighting.py)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped for a non-finite loss or gradient
    first_bad_step: jax.Array  # int32 scalar: first step with a non-finite loss/grad, -1 if none


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def train_step(state: TrainState, batch: Batch, tables, *, model, tx, run: RunSpec) -> tuple:
    """One optimizer update on a global batch: mask on device, forward, backward, AdamW."""
    step, spec = state.step, run.masking
    keys = masking.masking_keys(
        stream_key(run.seed, MASK), step, batch["example_ids"], batch["epochs"], spec.static_epochs
    )
    ratio = masking_ratio(step, keys, spec)
    masked = masking.mask_batch(keys, batch, ratio=ratio, spec=spec, tables=tables)
    loss_weights_BxK, tokens_B = loss_weights(
        spec.loss_weighting, masked.weights, masked.num_maskable, masked.num_selected
    )
    whole = {
        "inputs": masked.inputs,
        "positions": masked.positions,
        "targets": masked.targets,
        "weights": masked.weights,
        "loss_weights": loss_weights_BxK,
        "tokens": tokens_B,
        "document_ids": batch["document_ids"],
    }
    dropout_key = jax.random.fold_in(stream_key(run.seed, DROPOUT), step)
    grads, sums = _gradient_sums(state.params, whole, dropout_key, model, run.train.microbatches)
    # d(loss) = d(weighted sum) / its denominator (predictions for mean, eligible tokens for
    # elbo), exact across microbatches.
    denom = jnp.maximum(sums["objective_tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optim.global_norm(grads)
    loss = sums["objective_sum"] / denom
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {
        "loss": loss,
        "accuracy": sums["correct_sum"] / jnp.maximum(sums["weight_sum"], 1.0),
        "grad_norm": grad_norm,
        "mask_ratio": jnp.mean(ratio.value),  # scheduled, or the batch's mean drawn rate
        "masked_fraction": masked_fraction(masked),
        "predictions": sums["weight_sum"],
        "finite": finite,
    }
    return _updated(state, grads, finite, tx), metrics


def _gradient_sums(params, whole: dict, dropout_key, model, num_micro: int):
    """Gradients of the summed loss and the metric sums, over `num_micro` microbatches."""

    def loss_sum(params, micro, micro_index):
        logits = model.apply(
            {"params": params},
            micro["inputs"],
            micro["positions"],
            document_ids_BxL=micro["document_ids"],
            deterministic=False,
            rngs={"dropout": jax.random.fold_in(dropout_key, micro_index)},
        )
        sums = _sum_metrics(logits, micro["targets"], micro["weights"])
        sums |= weighted_loss_sums(logits, micro["targets"], micro["loss_weights"], micro["tokens"])
        return sums["objective_sum"], sums

    grad_fn = jax.grad(loss_sum, has_aux=True)
    if num_micro == 1:
        return grad_fn(params, whole, 0)
    # [B, ...] -> [M, B/M, ...]; microbatch m takes rows m, m+M, ... so every microbatch
    # spans all data shards and no resharding is needed.
    micros = jax.tree.map(
        lambda x: x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1),
        whole,
    )

    def accumulate(carry, inputs):
        micro, index = inputs
        g, s = grad_fn(params, micro, index)
        return jax.tree.map(jnp.add, carry, (g, s)), None

    zero_sums = {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS + OBJECTIVE_KEYS}
    zeros = jax.tree.map(jnp.zeros_like, (params, zero_sums))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micros, jnp.arange(num_micro)))
    return grads, sums


def _updated(state: TrainState, grads, finite, tx) -> TrainState:
    """The state after AdamW, or (a non-finite loss or gradient) the old one, counted."""
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optim.apply_updates(state.params, updates)
    keep_old = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    return state.replace(
        step=state.step + 1,
        params=keep_old(new_params, state.params),
        opt_state=_skippable_update(finite, new_opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        first_bad_step=jnp.where(
            (state.first_bad_step < 0) & ~finite, state.step + 1, state.first_bad_step
        ),
    )


def _sum_metrics(logits, targets, weights):
    _, m = mlm_loss(logits, targets, weights)
    return {k: m[k] for k in SUM_KEYS}


def _skippable_update(finite, new_opt_state, old_opt_state):
    """The optimizer state after a step that may have been skipped (non-finite, nan_policy=skip).

    A skipped step keeps Adam's moments and count, but the learning-rate schedule's count moves
    on, as a PyTorch LR scheduler steps whether or not the optimizer did: the rate stays the
    schedule at the step, as logged and as the masking schedule reads it.
    """

    def is_schedule(x):
        return isinstance(x, optax.ScaleByScheduleState)

    def pick(new, old):
        return new if is_schedule(new) else jnp.where(finite, new, old)

    return jax.tree.map(pick, new_opt_state, old_opt_state, is_leaf=is_schedule)


def masked_fraction(masked) -> jax.Array:
    """Selected / eligible tokens over the batch: the rate the model was trained at."""
    eligible = jnp.maximum(masked.num_maskable.sum(), 1).astype(jnp.float32)
    return masked.num_selected.sum().astype(jnp.float32) / eligible


def eval_step(params, batch: Batch, tables, key, ratio, *, model, spec) -> dict:
    """Metric sums on one held-out batch, masked with a fixed key (the same in every run)."""
    keys = jax.random.split(key, batch["tokens"].shape[0])
    if not spec.rates.is_fixed:  # the run's own masking draws a rate per row
        ratio = row_rates(keys, spec.rates)
    masked = masking.mask_batch(keys, batch, ratio=ratio, spec=spec, tables=tables)
    logits = model.apply(
        {"params": params},
        masked.inputs,
        masked.positions,
        document_ids_BxL=batch["document_ids"],
        deterministic=True,
    )
    sums = _sum_metrics(logits, masked.targets, masked.weights)
    return {**sums, "eligible_sum": masked.num_maskable.sum().astype(jnp.float32)}
