"""AdamW with warmup and decay, gradient clipping, and no weight decay on LayerNorm or biases."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup to the peak, then linear or cosine decay to 0 at the last step (or flat)."""
    peak = float(train_config.learning_rate)
    warmup = int(train_config.warmup_steps)
    total = max(int(train_config.num_steps), warmup + 1)
    kind = train_config.lr_schedule
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if kind == "linear":
        after = optax.linear_schedule(peak, 0.0, total - warmup)
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.train.lr_schedule={kind!r}: expected linear, cosine or constant")
    return optax.join_schedules([warm, after], [warmup])


def decay_mask(params):
    """True for matrices and embeddings; False for LayerNorm scales and every bias."""

    def decayed(path, _):
        name = str(getattr(path[-1], "key", ""))
        return name == "kernel" or name.endswith("embeddings")

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(train_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(train_config)
    parts = []
    if float(train_config.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(train_config.grad_clip)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(train_config.b1),
            b2=float(train_config.b2),
            eps=float(train_config.eps),
            weight_decay=float(train_config.weight_decay),
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def apply_updates(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
