"""A run's config, resolved once into frozen, typed specs: what the trainer, eval and loader read.

    run = resolve(config)               # every field checked, before anything is built or written
    run = run.with_vocab(tokenizer)     # once the tokenizer is known: vocabulary sizes and ids

Each section's spec checks its own fields in its constructor (ModelSpec: model.*, MaskingSpec:
masking.* and eval's masking, OptimizerSpec: the optimizer's train.*, DataSpec: data.*,
TrainSpec: the loop's train.*, log.*, eval.*, checkpoint.*, MeshSpec: mesh.*); training/checks.py
holds the checks that span sections. Nothing after `resolve` reads the ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mlm_jax.config.fields import check_choice, check_int
from mlm_jax.data.spec import DataSpec
from mlm_jax.masking import MaskingSpec
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import sharding
from mlm_jax.training.optim import OptimizerSpec

NAN_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The loop: how many steps of what batch, and how often it logs, evaluates and saves."""

    num_steps: int
    batch_size: int  # global, in sequences
    microbatches: int = 1
    nan_policy: str = "stop"
    log_every: int = 50
    eval_every: int = 500  # 0 = never
    eval_batches: int = 8
    eval_batch_size: int = 32
    bound_rates: int = 4  # eval.nll_bound_rates: stratified rates per row (0 = no bound)
    checkpoint_every: int = 500  # 0 = only at the end (and on SIGTERM)
    checkpoint_keep: int = 2

    def __post_init__(self):
        check_int("train.num_steps", self.num_steps, minimum=1)
        check_int("train.batch_size", self.batch_size, minimum=1)
        check_int("train.microbatches", self.microbatches, minimum=1)
        check_choice("train.nan_policy", self.nan_policy, NAN_POLICIES)
        check_int("log.every_steps", self.log_every, minimum=0)
        check_int("eval.every_steps", self.eval_every, minimum=0)
        check_int("eval.num_batches", self.eval_batches, minimum=1)
        check_int("eval.batch_size", self.eval_batch_size, minimum=1)
        check_int("eval.nll_bound_rates", self.bound_rates, minimum=0, maximum=64)
        check_int("checkpoint.every_steps", self.checkpoint_every, minimum=0)
        check_int("checkpoint.keep", self.checkpoint_keep, minimum=1)

    @classmethod
    def from_config(cls, config: Any) -> TrainSpec:
        t, e, ck = config.train, config.eval, config.checkpoint
        return cls(
            num_steps=t.num_steps,
            batch_size=t.batch_size,
            microbatches=t.microbatches,
            nan_policy=t.nan_policy,
            log_every=config.log.every_steps,
            eval_every=e.every_steps,
            eval_batches=e.num_batches,
            eval_batch_size=e.batch_size,
            bound_rates=e.nll_bound_rates,
            checkpoint_every=ck.every_steps,
            checkpoint_keep=ck.keep,
        )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run is, resolved; hashable, so jitted functions may close over it."""

    seed: int
    model: ModelSpec
    masking: MaskingSpec  # what the run trains with
    eval_masking: MaskingSpec  # what every run is evaluated with (eval.*)
    optimizer: OptimizerSpec
    data: DataSpec
    train: TrainSpec
    mesh: sharding.MeshSpec
    init_from: str = ""  # HF (Modern)BERT directory or a run directory ("" = random init)

    @property
    def own_masking(self) -> MaskingSpec | None:
        """The run's own masking when it differs from the common eval masking (then also
        evaluated, as eval_own/*), else None."""
        return None if self.masking == self.eval_masking else self.masking

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.data.seq_len

    def with_max_predictions(self, k: int) -> RunSpec:
        """The same run with K prediction slots per row (a resumed run keeps its own)."""
        masking = dataclasses.replace(self.masking, max_predictions=k)
        return dataclasses.replace(self, masking=masking)

    def with_vocab(self, tokenizer) -> RunSpec:
        """Vocabulary sizes and special ids from the tokenizer (checked against the config)."""
        return dataclasses.replace(
            self,
            model=self.model.with_vocab(tokenizer),
            masking=self.masking.with_vocab(tokenizer),
            eval_masking=self.eval_masking.with_vocab(tokenizer),
        )
