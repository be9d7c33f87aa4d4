"""The train state and the sharded train and eval steps (the run that loops over them: training/run.py).

A step is one `jax.jit` over the device mesh: `(state, batch) -> (state, metrics)` with
explicit shardings and the state donated. Randomness comes only from keys folded from the
config's seed and the step, so a run is a function of (config, code, data): rerun or resume it
and the numbers are the same.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlm_jax import masking
from mlm_jax.masking.rates import masking_ratio, row_rates
from mlm_jax.models.registry import mlm_model
from mlm_jax.training import optim, sharding
from mlm_jax.training.bound import bound_spec, bound_step, nll_bound
from mlm_jax.training.loss import mlm_loss
from mlm_jax.training.spec import RunSpec
from mlm_jax.training.weighting import loss_weights, weighted_loss_sums

log = logging.getLogger(__name__)

# Independent random streams of a run, all folded from the seed.
_INIT, _MASK, _DROPOUT, _EVAL = 1, 2, 3, 4


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped for a non-finite loss or gradient
    first_bad_step: jax.Array  # int32 scalar: first step with a non-finite loss/grad, -1 if none


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


_SUM_KEYS = ("loss_sum", "correct_sum", "weight_sum")  # sums combine exactly across pieces
_OBJECTIVE_KEYS = ("objective_sum", "objective_tokens")  # the weighted loss (weighting.py)


def _sum_metrics(logits, targets, weights):
    _, m = mlm_loss(logits, targets, weights)
    return {k: m[k] for k in _SUM_KEYS}


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


def train_step(state: TrainState, batch: dict, *, model, tx, run: RunSpec) -> tuple:
    """One optimizer update on a global batch: mask on device, forward, backward, AdamW."""
    step, spec = state.step, run.masking
    keys = masking.masking_keys(
        stream_key(run.seed, _MASK), step, batch["example_ids"], batch["epochs"], spec.static_epochs
    )
    ratio = masking_ratio(step, keys, spec)
    masked = masking.mask_tokens(
        keys, batch["tokens"], batch["maskable"], _starts(batch, spec), ratio=ratio, spec=spec
    )
    dropout_key = jax.random.fold_in(stream_key(run.seed, _DROPOUT), step)

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
    grad_fn = jax.grad(loss_sum, has_aux=True)
    num_micro = run.train.microbatches
    if num_micro == 1:
        grads, sums = grad_fn(state.params, whole, 0)
    else:
        # [B, ...] -> [M, B/M, ...]; microbatch m takes rows m, m+M, ... so every microbatch
        # spans all data shards and no resharding is needed.
        micros = jax.tree.map(
            lambda x: x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1),
            whole,
        )

        def accumulate(carry, inputs):
            micro, index = inputs
            g, s = grad_fn(state.params, micro, index)
            return jax.tree.map(jnp.add, carry, (g, s)), None

        zero_sums = {k: jnp.zeros((), jnp.float32) for k in _SUM_KEYS + _OBJECTIVE_KEYS}
        zeros = jax.tree.map(jnp.zeros_like, (state.params, zero_sums))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micros, jnp.arange(num_micro)))

    # d(loss) = d(weighted sum) / its denominator (predictions for mean, eligible tokens for
    # elbo), exact across microbatches.
    denom = jnp.maximum(sums["objective_tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optim.global_norm(grads)
    loss = sums["objective_sum"] / denom
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optim.apply_updates(state.params, updates)
    keep_old = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = state.replace(
        step=step + 1,
        params=keep_old(new_params, state.params),
        opt_state=_skippable_update(finite, new_opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        first_bad_step=jnp.where(
            (state.first_bad_step < 0) & ~finite, step + 1, state.first_bad_step
        ),
    )
    metrics = {
        "loss": loss,
        "accuracy": sums["correct_sum"] / jnp.maximum(sums["weight_sum"], 1.0),
        "grad_norm": grad_norm,
        "mask_ratio": jnp.mean(ratio.value),  # scheduled, or the batch's mean drawn rate
        "masked_fraction": masked_fraction(masked),
        "predictions": sums["weight_sum"],
        "finite": finite,
    }
    return new_state, metrics


def _starts(batch: dict, spec) -> jax.Array:
    """The unit starts the strategy takes: PMI n-gram units (host-marked) or word starts."""
    return batch["unit_starts"] if spec.strategy == "pmi" else batch["word_starts"]


def masked_fraction(masked) -> jax.Array:
    """Selected / eligible tokens over the batch: the rate the model was trained at."""
    eligible = jnp.maximum(masked.num_maskable.sum(), 1).astype(jnp.float32)
    return masked.num_selected.sum().astype(jnp.float32) / eligible


def eval_step(params, batch: dict, key, ratio, *, model, spec) -> dict:
    """Metric sums on one held-out batch, masked with a fixed key (the same in every run)."""
    keys = jax.random.split(key, batch["tokens"].shape[0])
    if not spec.rates.is_fixed:  # the run's own masking draws a rate per row
        ratio = row_rates(keys, spec.rates)
    masked = masking.mask_tokens(
        keys, batch["tokens"], batch["maskable"], _starts(batch, spec), ratio=ratio, spec=spec
    )
    logits = model.apply(
        {"params": params},
        masked.inputs,
        masked.positions,
        document_ids_BxL=batch["document_ids"],
        deterministic=True,
    )
    sums = _sum_metrics(logits, masked.targets, masked.weights)
    return {**sums, "eligible_sum": masked.num_maskable.sum().astype(jnp.float32)}


class Trainer:
    """Everything a run builds once: mesh, model, masking, optimizer and the jitted steps."""

    def __init__(self, run: RunSpec, *, devices=None):
        if run.model.vocab_size == 0:
            raise ValueError(
                "Trainer needs a RunSpec with its vocabulary: run.with_vocab(tokenizer)"
            )
        self.run = run
        self.mesh = sharding.make_mesh(run.mesh, devices)
        self.rules = run.mesh.rules
        self.model = mlm_model(run.model)
        self.tx, self.lr_schedule = optim.make_optimizer(run.optimizer)
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self._build()

    def _init_state(self, key):
        tokens = jnp.zeros((1, self.run.data.seq_len), jnp.int32)
        positions = jnp.zeros((1, self.run.masking.max_predictions), jnp.int32)
        variables = self.model.init({"params": key, "dropout": key}, tokens, positions)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(nn.unbox(params)),
            skipped=jnp.zeros((), jnp.int32),
            first_bad_step=jnp.full((), -1, jnp.int32),
        )

    def _build(self):
        # Initialisation runs outside the mesh context: out_shardings alone place each
        # parameter, so no full copy ever sits on one device.
        boxed = jax.eval_shape(self._init_state, jax.random.key(0))
        replicated = sharding.replicated(self.mesh)
        state_sharding = sharding.logical_shardings(boxed, self.mesh, self.rules)
        # The optimizer state is built from unboxed parameters, so it carries no logical axis
        # names: its parameter-shaped parts (Adam's moments) take their parameter's sharding,
        # or fsdp would shard the parameters but keep a full copy of the moments per device.
        opt_sharding = optax.tree_map_params(
            self.tx,
            lambda _, param_sharding: param_sharding,
            nn.unbox(boxed.opt_state),
            state_sharding.params,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
        )
        self.state_sharding = state_sharding.replace(opt_state=opt_sharding)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.unbox(boxed),
            self.state_sharding,
        )
        # Jitted functions; `compile` swaps in their executables compiled ahead of time.
        self._jitted = {
            "init": jax.jit(
                lambda key: nn.unbox(self._init_state(key)), out_shardings=self.state_sharding
            ),
            "train": jax.jit(
                functools.partial(train_step, model=self.model, tx=self.tx, run=self.run),
                in_shardings=(self.state_sharding, self.batch_sharding),
                out_shardings=(self.state_sharding, replicated),
                donate_argnums=0,
            ),
        }
        for name, spec in (("eval", self.run.eval_masking), ("eval_own", self.run.own_masking)):
            if spec is not None:
                self._jitted[name] = jax.jit(
                    functools.partial(eval_step, model=self.model, spec=spec),
                    in_shardings=(
                        self.state_sharding.params,
                        self.batch_sharding,
                        replicated,
                        None,
                    ),
                    out_shardings=replicated,
                )
        if self.run.train.bound_rates:
            spec = bound_spec(self.run.eval_masking, self.run.data.seq_len)
            self._jitted["bound"] = jax.jit(
                functools.partial(
                    bound_step, model=self.model, spec=spec,
                    num_strata=self.run.train.bound_rates,
                ),
                in_shardings=(self.state_sharding.params, self.batch_sharding, replicated, None),
                out_shardings=replicated,
            )  # fmt: skip
        self._compiled = {}
        self.train_step = functools.partial(self._call, "train")
        self.eval_steps = {
            name: functools.partial(self._call, name) for name in ("eval", "eval_own")
            if name in self._jitted
        }  # fmt: skip

    def _call(self, name: str, *args):
        return self._compiled.get(name, self._jitted[name])(*args)

    def jitted(self, name: str):
        """The jitted step ("train", "eval", "eval_own", "init"), for lowering by hand."""
        return self._jitted[name]

    def compile(self, eval_batch: dict, *, with_init: bool) -> None:
        """Compiles the train and eval steps (and init) ahead of their first call.

        eval_batch: one global eval batch; the train batch has its keys and dtypes with
        train.batch_size rows. Runs in any thread (the mesh context is entered here).
        """

        def like(x, rows=None):
            shape = x.shape if rows is None else (rows, *x.shape[1:])
            return jax.ShapeDtypeStruct(shape, x.dtype, sharding=self.batch_sharding)

        batch = {k: like(v, self.run.train.batch_size) for k, v in eval_batch.items()}
        key = jax.eval_shape(lambda: jax.random.key(0))
        ratio = jax.eval_shape(lambda: masking.scheduled_ratio(0, self.run.masking))
        with self.activate():
            compiled = {"train": self._jitted["train"].lower(self.abstract_state, batch).compile()}
            args = (self.abstract_state.params, {k: like(v) for k, v in eval_batch.items()})
            for name in self.eval_steps:
                compiled[name] = self._jitted[name].lower(*args, key, ratio).compile()
            if "bound" in self._jitted:
                stratum = jax.ShapeDtypeStruct((), jnp.int32)
                compiled["bound"] = self._jitted["bound"].lower(*args, key, stratum).compile()
            if with_init:
                compiled["init"] = self._jitted["init"].lower(key).compile()
        self._compiled.update(compiled)

    def activate(self):
        """Context in which the model's logical activation constraints resolve on this mesh."""
        return _MeshContext(self.mesh, self.rules)

    def new_state(self) -> TrainState:
        return self._call("init", stream_key(self.run.seed, _INIT))

    def global_batch(self, host_batch: dict) -> dict:
        return sharding.host_to_global(host_batch, self.batch_sharding)

    def evaluate(self, params, eval_batches: list[dict], step) -> dict[str, float]:
        """Loss, accuracy and perplexity over masked positions of the held-out batches.

        eval_batches are global batches (`global_batch`), placed once for the whole run.
        """
        out = {}
        for name, eval_fn in self.eval_steps.items():
            spec = self.run.eval_masking if name == "eval" else self.run.masking
            ratio = masking.scheduled_ratio(step, spec)
            base = stream_key(self.run.seed, _EVAL)
            totals = {k: 0.0 for k in (*_SUM_KEYS, "eligible_sum")}
            with self.activate():
                sums = [
                    eval_fn(params, batch, jax.random.fold_in(base, i), ratio)
                    for i, batch in enumerate(eval_batches)
                ]
            for batch_sums in jax.device_get(sums):  # one host sync per evaluation
                for k, v in batch_sums.items():
                    totals[k] += float(v)
            n = totals["weight_sum"]
            out[f"{name}/predictions"] = n
            out[f"{name}/masked_fraction"] = n / max(totals["eligible_sum"], 1.0)
            if n == 0:  # a mean over nothing is not a score: no number is logged for it
                log.warning(
                    "%s at step %s: no position was selected; no loss to report", name, step
                )
                continue
            loss = totals["loss_sum"] / n
            out[f"{name}/loss"] = loss
            out[f"{name}/accuracy"] = totals["correct_sum"] / n
            out[f"{name}/perplexity"] = float(np.exp(min(loss, 50.0)))
        if "bound" in self._jitted:
            bound_fn = functools.partial(self._call, "bound", params)
            with self.activate():
                out.update(nll_bound(bound_fn, eval_batches, self.run.train.bound_rates))
        return out


class _MeshContext:
    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._rules = nn.logical_axis_rules(self.rules)
        self._rules.__enter__()
        self._mesh = jax.set_mesh(self.mesh)
        self._mesh.__enter__()
        return self

    def __exit__(self, *exc):
        self._mesh.__exit__(*exc)
        self._rules.__exit__(*exc)


def compile_steps(trainer: Trainer, eval_batch: dict, stop, *, with_init: bool) -> None:
    """trainer.compile in a background thread, with a line before and after: the main thread
    waits in short slices, so SIGTERM is honoured within a second even while XLA compiles
    (`stop`, a train.StopSignal, raises from its handler until steps begin)."""
    import threading
    import time

    log.info("compiling the train and eval steps ...")
    start = time.perf_counter()
    failure: list[BaseException] = []

    def compile_all():
        try:
            trainer.compile(eval_batch, with_init=with_init)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(e)

    thread = threading.Thread(target=compile_all, name="mlm_jax-compile", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if failure:
        raise failure[0]
    del stop  # (its handler does the interrupting; nothing to poll)
    log.info("compiled in %.1f s", time.perf_counter() - start)
