"""The sharded train and eval steps, built once per run (the steps themselves: training/step.py;
the run that loops over them: training/run.py).

A step is one `jax.jit` over the device mesh: `(state, batch, tables) -> (state, metrics)` with
explicit shardings and the state donated; `tables` are what the host prepared for the masking
strategy (masking/strategy.py), placed once, replicated.
"""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlm_jax import masking
from mlm_jax.models.registry import mlm_model
from mlm_jax.training import optim, sharding
from mlm_jax.training.bound import bound_spec, bound_step, nll_bound
from mlm_jax.training.spec import RunSpec
from mlm_jax.training.step import (
    EVAL,
    INIT,
    SUM_KEYS,
    TrainState,
    eval_step,
    stream_key,
    train_step,
)

__all__ = ["Trainer", "TrainState", "compile_steps", "stream_key"]

log = logging.getLogger(__name__)


class Trainer:
    """Everything a run builds once: mesh, model, masking, optimizer and the jitted steps."""

    def __init__(self, run: RunSpec, *, devices=None, tables=None):
        """tables: the masking strategy's host-prepared arrays (masking.prepare_host), if any."""
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
        self.tables = jax.device_put(dict(tables or {}), sharding.replicated(self.mesh))
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
                in_shardings=(self.state_sharding, self.batch_sharding, replicated),
                out_shardings=(self.state_sharding, replicated),
                donate_argnums=0,
            ),
        }
        self._jitted.update(self._jit_evaluations(replicated))
        self._compiled = {}
        self.train_step = functools.partial(self._call_with_tables, "train")
        self.eval_steps = {
            name: functools.partial(self._call_with_tables, name) for name in ("eval", "eval_own")
            if name in self._jitted
        }  # fmt: skip

    def _jit_evaluations(self, replicated) -> dict:
        """The jitted eval steps (the common masking; the run's own if it differs) and the
        likelihood bound's step (eval.nll_bound_rates)."""
        jitted = {}
        params, batch = self.state_sharding.params, self.batch_sharding
        for name, spec in (("eval", self.run.eval_masking), ("eval_own", self.run.own_masking)):
            if spec is not None:
                jitted[name] = jax.jit(
                    functools.partial(eval_step, model=self.model, spec=spec),
                    in_shardings=(params, batch, replicated, replicated, None),
                    out_shardings=replicated,
                )
        if self.run.train.bound_rates:
            spec = bound_spec(self.run.eval_masking, self.run.data.seq_len)
            jitted["bound"] = jax.jit(
                functools.partial(
                    bound_step, model=self.model, spec=spec,
                    num_strata=self.run.train.bound_rates,
                ),
                in_shardings=(params, batch, replicated, None),
                out_shardings=replicated,
            )  # fmt: skip
        return jitted

    def _call(self, name: str, *args):
        return self._compiled.get(name, self._jitted[name])(*args)

    def _call_with_tables(self, name: str, state_or_params, batch, *args):
        return self._call(name, state_or_params, batch, self.tables, *args)

    def jitted(self, name: str):
        """The jitted step ("train", "eval", "eval_own", "init"), for lowering by hand: the steps
        take the masking tables (`self.tables`) after the batch."""
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
            train = self._jitted["train"].lower(self.abstract_state, batch, self.tables)
            compiled = {"train": train.compile()}
            args = (self.abstract_state.params, {k: like(v) for k, v in eval_batch.items()})
            evaluates = self.run.train.eval_every > 0  # (eval.every_steps=0: never called)
            for name in self.eval_steps if evaluates else ():
                lowered = self._jitted[name].lower(*args, self.tables, key, ratio)
                compiled[name] = lowered.compile()
            if evaluates and "bound" in self._jitted:
                stratum = jax.ShapeDtypeStruct((), jnp.int32)
                compiled["bound"] = self._jitted["bound"].lower(*args, key, stratum).compile()
            if with_init:
                compiled["init"] = self._jitted["init"].lower(key).compile()
        self._compiled.update(compiled)

    def activate(self):
        """Context in which the model's logical activation constraints resolve on this mesh."""
        return _MeshContext(self.mesh, self.rules)

    def new_state(self) -> TrainState:
        return self._call("init", stream_key(self.run.seed, INIT))

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
            base = stream_key(self.run.seed, EVAL)
            totals = {k: 0.0 for k in (*SUM_KEYS, "eligible_sum")}
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
