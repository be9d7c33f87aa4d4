"""The train state, the sharded train and eval steps, and the loop that joins them.

A step is one `jax.jit` over the device mesh: `(state, batch) -> (state, metrics)` with
explicit shardings and the state donated. Randomness comes only from keys folded from the
config's seed and the step, so a run is a function of (config, code, data): rerun or resume it
and the numbers are the same.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlm_jax import checkpoint as ckpt
from mlm_jax import masking, optim, sharding
from mlm_jax import metrics as metrics_lib
from mlm_jax.config_checks import (
    as_config_errors,
    check_resume_compatible,
    resolve_config,
    validate_config,
)
from mlm_jax.model import BertMLM, ModelConfig, mlm_loss

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


def _sum_metrics(logits, targets, weights):
    _, m = mlm_loss(logits, targets, weights)
    return {k: m[k] for k in ("loss_sum", "correct_sum", "weight_sum")}


def train_step(state: TrainState, batch: dict, *, model, spec, tx, config) -> tuple:
    """One optimizer update on a global batch: mask on device, forward, backward, AdamW."""
    step = state.step
    ratio = masking.ratio_at_step(step, config.masking, config.train.num_steps)
    keys = masking.masking_keys(
        stream_key(config.seed, _MASK),
        step,
        batch["example_ids"],
        batch["epochs"],
        config.masking.static_epochs,
    )
    masked = masking.mask_tokens(
        keys, batch["tokens"], batch["maskable"], batch["word_starts"], ratio=ratio, spec=spec
    )
    dropout_key = jax.random.fold_in(stream_key(config.seed, _DROPOUT), step)

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
        return sums["loss_sum"], sums

    whole = {
        "inputs": masked.inputs,
        "positions": masked.positions,
        "targets": masked.targets,
        "weights": masked.weights,
        "document_ids": batch["document_ids"],
    }
    grad_fn = jax.grad(loss_sum, has_aux=True)
    num_micro = int(config.train.microbatches)
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

        zeros = jax.tree.map(
            jnp.zeros_like, (state.params, {k: jnp.zeros((), jnp.float32) for k in _SUM_KEYS})
        )
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micros, jnp.arange(num_micro)))

    # d(mean loss) = d(sum of losses) / number of predictions, exact across microbatches.
    denom = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optim.global_norm(grads)
    loss = sums["loss_sum"] / denom
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optim.apply_updates(state.params, updates)
    keep_old = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = state.replace(
        step=step + 1,
        params=keep_old(new_params, state.params),
        opt_state=keep_old(new_opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        first_bad_step=jnp.where(
            (state.first_bad_step < 0) & ~finite, step + 1, state.first_bad_step
        ),
    )
    metrics = {
        "loss": loss,
        "accuracy": sums["correct_sum"] / denom,
        "grad_norm": grad_norm,
        "mask_ratio": ratio,
        "predictions": sums["weight_sum"],
        "finite": finite,
    }
    return new_state, metrics


_SUM_KEYS = ("loss_sum", "correct_sum", "weight_sum")


def eval_step(params, batch: dict, key, ratio, *, model, spec) -> dict:
    """Metric sums on one held-out batch, masked with a fixed key (the same in every run)."""
    keys = jax.random.split(key, batch["tokens"].shape[0])
    masked = masking.mask_tokens(
        keys, batch["tokens"], batch["maskable"], batch["word_starts"], ratio=ratio, spec=spec
    )
    logits = model.apply(
        {"params": params},
        masked.inputs,
        masked.positions,
        document_ids_BxL=batch["document_ids"],
        deterministic=True,
    )
    return _sum_metrics(logits, masked.targets, masked.weights)


def eval_masking_config(config):
    """The masking every run is evaluated with, whatever it trains with: comparable numbers."""
    m = ml_collections.ConfigDict(config.masking.to_dict())
    m.ratio = m.end_ratio = float(config.eval.mask_ratio)
    m.schedule = "constant"
    m.static_epochs = 0
    m.strategy = config.eval.strategy
    m.mask_prob = float(config.eval.mask_prob)
    m.random_prob = float(config.eval.random_prob)
    return m


def _same_masking(config) -> bool:
    m, e = config.masking, config.eval
    return (
        m.schedule == "constant"
        and float(m.ratio) == float(e.mask_ratio)
        and m.strategy == e.strategy
        and float(m.mask_prob) == float(e.mask_prob)
        and float(m.random_prob) == float(e.random_prob)
    )


class _Preemption:
    """Turns SIGTERM (a TPU VM preemption notice) into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the current step, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Everything a run builds once: mesh, model, masking, optimizer and the jitted steps."""

    def __init__(self, config, vocab, *, devices=None):
        self.config = config
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.logical_rules(config.mesh)
        self.model_config = ModelConfig.from_config(
            config.model, vocab_size=config.model.vocab_size, pad_id=vocab.pad_id
        )
        self.model = BertMLM(self.model_config)
        specs = dict(
            seq_len=config.data.seq_len,
            vocab_size=config.model.vocab_size,
            mask_id=vocab.mask_id,
            special_ids=tuple(vocab.special_ids),
        )
        self.spec = masking.MaskingSpec.from_config(
            config.masking, num_steps=config.train.num_steps, **specs
        )
        self.eval_spec = masking.MaskingSpec.from_config(
            eval_masking_config(config), num_steps=config.train.num_steps, **specs
        )
        # The run's own masking is evaluated too when it differs from the common one.
        self.own_spec = None if _same_masking(config) else self.spec
        self.tx, self.lr_schedule = optim.make_optimizer(config.train)
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self._build()

    def _init_state(self, key):
        tokens = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
        positions = jnp.zeros((1, self.spec.max_predictions), jnp.int32)
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
        self.state_sharding = sharding.logical_shardings(boxed, self.mesh, self.rules)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.unbox(boxed),
            self.state_sharding,
        )
        replicated = sharding.replicated(self.mesh)
        self.init = jax.jit(
            lambda key: nn.unbox(self._init_state(key)), out_shardings=self.state_sharding
        )
        step = functools.partial(
            train_step, model=self.model, spec=self.spec, tx=self.tx, config=self.config
        )
        self.train_step = jax.jit(
            step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
        )
        self.eval_steps = {}
        for name, spec in (("eval", self.eval_spec), ("eval_own", self.own_spec)):
            if spec is None:
                continue
            fn = functools.partial(eval_step, model=self.model, spec=spec)
            self.eval_steps[name] = jax.jit(
                fn,
                in_shardings=(self.state_sharding.params, self.batch_sharding, replicated, None),
                out_shardings=replicated,
            )

    def activate(self):
        """Context in which the model's logical activation constraints resolve on this mesh."""
        return _MeshContext(self.mesh, self.rules)

    def new_state(self) -> TrainState:
        return self.init(stream_key(self.config.seed, _INIT))

    def global_batch(self, host_batch: dict) -> dict:
        return sharding.host_to_global(host_batch, self.batch_sharding)

    def evaluate(self, params, eval_batches: list[dict], step) -> dict[str, float]:
        """Loss, accuracy and perplexity over masked positions of the held-out batches."""
        out = {}
        for name, eval_fn in self.eval_steps.items():
            if name == "eval":
                ratio = float(self.config.eval.mask_ratio)
            else:
                ratio = masking.ratio_at_step(
                    step, self.config.masking, self.config.train.num_steps
                )
            base = stream_key(self.config.seed, _EVAL)
            totals = {k: 0.0 for k in _SUM_KEYS}
            with self.activate():
                for i, batch in enumerate(eval_batches):
                    sums = eval_fn(
                        params, self.global_batch(batch), jax.random.fold_in(base, i), ratio
                    )
                    for k, v in jax.device_get(sums).items():
                        totals[k] += float(v)
            n = max(totals["weight_sum"], 1.0)
            loss = totals["loss_sum"] / n
            out[f"{name}/loss"] = loss
            out[f"{name}/accuracy"] = totals["correct_sum"] / n
            out[f"{name}/perplexity"] = float(np.exp(min(loss, 50.0)))
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


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns final metrics."""
    from mlm_jax.data import loader  # the input pipeline (grain, TFDS) only where data is read

    with as_config_errors():  # nothing compiled, nothing written until these pass
        validate_config(config)
        check_resume_compatible(config, workdir)
        loader.validate_data_config(config)
        os.makedirs(workdir, exist_ok=True)
        tokenizer = loader.get_tokenizer(config, workdir)
        config = resolve_config(config, tokenizer)
        check_resume_compatible(config, workdir)
        trainer = Trainer(config, tokenizer)
    is_writer = jax.process_index() == 0

    manager = ckpt.make_manager(workdir, config)
    unfinished = ckpt.unfinished_writes(workdir)
    start_step = manager.latest_step()
    if unfinished:
        log.warning(
            "ignoring unfinished checkpoint writes %s; resuming from the last complete one (%s)",
            unfinished,
            start_step,
        )
    train_iter = loader.make_train_iterator(config, tokenizer)
    if start_step is not None:
        state, data_state = ckpt.restore(manager, start_step, trainer.abstract_state)
        train_iter.set_state(data_state)
        log.info("resumed from the checkpoint of step %d in %s", start_step, workdir)
    else:
        state = trainer.new_state()
        if config.model.init_from:
            state = _load_pretrained(trainer, state, config.model.init_from)
        start_step = 0
    if is_writer:
        _write_config(config, workdir)
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_writer)
    writer.truncate_after(start_step)
    eval_batches = loader.make_eval_batches(config, tokenizer)

    result = _loop(config, trainer, state, train_iter, eval_batches, manager, writer, start_step)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    return result


def _load_pretrained(trainer: Trainer, state: TrainState, directory: str) -> TrainState:
    from mlm_jax import hf

    template = jax.device_get(state.params)
    params = hf.load_pretrained_params(directory, trainer.model_config, template)
    params = jax.device_put(params, trainer.state_sharding.params)
    opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_sharding.opt_state)(params)
    log.info("initialised parameters from %s", directory)
    return state.replace(params=params, opt_state=opt_state)


def _write_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _loop(config, trainer, state, train_iter, eval_batches, manager, writer, start_step):
    num_steps = int(config.train.num_steps)
    tokens_per_step = int(config.train.batch_size) * int(config.data.seq_len)
    log_every = max(int(config.log.every_steps), 1)
    eval_every = int(config.eval.every_steps)
    ckpt_every = int(config.checkpoint.every_steps)
    progress = metrics_lib.Progress(num_steps, start_step)
    result: dict[str, float] = {}

    def run_eval(step):
        scalars = trainer.evaluate(state.params, eval_batches, step)
        writer.write(step, scalars)
        metrics_lib.log_line(
            f"eval at step {step}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith("eval/"))
        )
        return scalars

    if start_step == 0 and eval_every > 0:
        result.update(run_eval(0))

    data_states = {}  # step the batch is for -> iterator position after drawing it
    pending = []  # device metrics of steps not yet pulled to the host
    window_start = time.perf_counter()

    def next_batch(for_step):
        host = next(train_iter)
        data_states[for_step] = train_iter.get_state()
        return trainer.global_batch(host)

    step = start_step
    batch = next_batch(step) if step < num_steps else None
    with _Preemption() as preemption, trainer.activate():
        while step < num_steps:
            state, step_metrics = trainer.train_step(state, batch)
            step += 1
            pending.append(step_metrics)
            if step < num_steps:
                batch = next_batch(step)  # host work overlaps the step running on device
            last = step == num_steps
            if step % log_every == 0 or last or preemption.requested:
                pulled = jax.device_get(pending)
                pending = []
                _check_finite(config, pulled, state)
                elapsed = time.perf_counter() - window_start
                window_start = time.perf_counter()
                scalars = {
                    f"train/{k}": float(np.mean([m[k] for m in pulled]))
                    for k in ("loss", "accuracy", "grad_norm", "mask_ratio")
                }
                scalars["train/learning_rate"] = float(trainer.lr_schedule(step - 1))
                scalars["train/tokens_per_s"] = len(pulled) * tokens_per_step / max(elapsed, 1e-9)
                scalars["train/skipped_updates"] = float(jax.device_get(state.skipped))
                writer.write(step, scalars)
                result.update(scalars)
                metrics_lib.log_line(
                    progress.line(step, scalars["train/loss"], scalars["train/tokens_per_s"])
                )
            if eval_every > 0 and (step % eval_every == 0 or last):
                result.update(run_eval(step))
            if (ckpt_every > 0 and step % ckpt_every == 0) or last or preemption.requested:
                _check_finite(config, [], state)
                ckpt.save(manager, step, state, data_states[step - 1], config)
                data_states = {s: v for s, v in data_states.items() if s >= step}
            if preemption.requested:
                manager.wait_until_finished()
                log.warning("checkpoint of step %d written; exiting for preemption", step)
                raise SystemExit(0)
    return result


def _check_finite(config, pulled_metrics: list[dict], state: TrainState) -> None:
    """With nan_policy=stop, a non-finite step ends the run before anything is saved."""
    if config.train.nan_policy != "stop":
        return
    bad = int(jax.device_get(state.first_bad_step))
    if bad >= 0:
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad}; the update was not applied and no "
            "checkpoint was written after it (set config.train.nan_policy=skip to skip such "
            "updates instead)"
        )
