"""AdamW with warmup and decay, gradient clipping, and no weight decay on LayerNorm or biases.

One factory for pretraining and fine-tuning: each describes its optimizer as an
OptimizerSpec (pretraining from config.train, fine-tuning from its own flags) and calls
`make_optimizer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mlm_jax.config.defaults import base_config
from mlm_jax.config.fields import check_choice, check_float, check_int

LR_SCHEDULES = ("linear", "cosine", "constant", "wsd")
DECAY_SHAPES = ("linear", "cosine", "sqrt")  # wsd's decay: sqrt = 1 - sqrt(t) (ModernBERT's)
_TRAIN = base_config().train


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and its learning-rate schedule; the constructor checks every field."""

    # The defaults are config/defaults.py's train.* (one source); what each means is said there.
    learning_rate: float  # peak
    num_steps: int  # the schedule's length: decay reaches 0 after the last step
    warmup_steps: int = _TRAIN.warmup_steps
    lr_schedule: str = _TRAIN.lr_schedule
    weight_decay: float = _TRAIN.weight_decay
    b1: float = _TRAIN.b1
    b2: float = _TRAIN.b2
    eps: float = _TRAIN.eps
    grad_clip: float = _TRAIN.grad_clip  # global norm; 0 = off
    decay_share: float = _TRAIN.decay_share  # wsd: the share of num_steps spent decaying
    decay_shape: str = _TRAIN.decay_shape  # wsd: linear | cosine | sqrt

    def __post_init__(self):
        check_float("train.learning_rate", self.learning_rate, low=0, low_open=True)
        check_int("train.num_steps", self.num_steps, minimum=1)
        check_int("train.warmup_steps", self.warmup_steps, minimum=0, maximum=self.num_steps)
        check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_float("train.weight_decay", self.weight_decay, low=0)
        check_float("train.b1", self.b1, low=0, high=1, high_open=True)
        check_float("train.b2", self.b2, low=0, high=1, high_open=True)
        check_float("train.eps", self.eps, low=0, low_open=True)
        check_float("train.grad_clip", self.grad_clip, low=0)
        check_float("train.decay_share", self.decay_share, low=0, high=1, low_open=True)
        check_choice("train.decay_shape", self.decay_shape, DECAY_SHAPES)
        if self.lr_schedule == "wsd" and self.warmup_steps + self.decay_steps > self.num_steps:
            raise ValueError(
                f"config.train.decay_share={self.decay_share}: its {self.decay_steps} decay "
                f"steps and train.warmup_steps={self.warmup_steps} exceed "
                f"train.num_steps={self.num_steps}"
            )

    @property
    def decay_steps(self) -> int:
        """wsd: steps of the final decay (at least 1)."""
        return max(1, round(self.decay_share * self.num_steps))

    @classmethod
    def from_config(cls, train_config: Any) -> OptimizerSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: train_config[name] for name in names if name in train_config})


def learning_rate_schedule(spec: OptimizerSpec) -> optax.Schedule:
    """Linear warmup to the peak, then linear or cosine decay to 0 at the last step (or flat;
    or wsd: flat, then the last decay_share of the steps decaying to 0 in decay_shape)."""
    peak, warmup = spec.learning_rate, spec.warmup_steps
    total = max(spec.num_steps, warmup + 1)
    if spec.lr_schedule == "wsd":
        return _wsd(spec)
    if spec.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if spec.lr_schedule == "linear":
        after = optax.linear_schedule(peak, 0.0, total - warmup)
    else:
        after = optax.constant_schedule(peak)
    return optax.join_schedules([warm, after], [warmup])


def _wsd(spec: OptimizerSpec) -> optax.Schedule:
    peak, warmup, decay = spec.learning_rate, spec.warmup_steps, spec.decay_steps
    start = spec.num_steps - decay  # the last step at the peak
    shape = spec.decay_shape

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        t = jnp.clip((step - start) / decay, 0.0, 1.0)  # 0 -> 1 over the decay
        if shape == "linear":
            factor = 1.0 - t
        elif shape == "cosine":
            factor = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:
            factor = 1.0 - jnp.sqrt(t)
        return jnp.where(step < warmup, warm, peak * factor)

    return schedule


def decay_mask(params):
    """True for matrices and embeddings; False for LayerNorm scales and every bias."""

    def decayed(path, _):
        name = str(getattr(path[-1], "key", ""))
        return name == "kernel" or name.endswith("embeddings")

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(spec: OptimizerSpec) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(spec)
    parts = []
    if spec.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    parts.append(
        optax.adamw(
            schedule,
            b1=spec.b1,
            b2=spec.b2,
            eps=spec.eps,
            weight_decay=spec.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def apply_updates(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
