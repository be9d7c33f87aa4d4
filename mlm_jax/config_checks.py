"""Checks a config before anything compiles or is written, and resolves its derived fields.

Every failure is one ValueError line naming the key, the value and what was expected.
"""

from __future__ import annotations

import contextlib
import logging
import math

import jax
import ml_collections

from mlm_jax import checkpoint as ckpt
from mlm_jax import sharding

log = logging.getLogger(__name__)
_WARNED: set = set()  # (workdir, num_steps change) pairs already warned about in this process

# Keys a resumed run may change: they do not alter what the state or the data mean.
# (train.num_steps lengthens or shortens the run; its schedules stretch with it, with a warning.)
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.nan_policy",
    "log.",
    "eval.every_steps",
    "eval.num_batches",
    "checkpoint.",
    "mesh.",
    "data.prefetch",
    "data.num_workers",
    "data.data_dir",
    "model.remat",
    "model.fused_qkv",
    "model.attention",
    "model.init_from",
)


class ConfigError(ValueError):
    """A bad config, flag or workdir, found before any compilation."""


@contextlib.contextmanager
def as_config_errors():
    """Reports the ValueErrors of the setup phase as ConfigError (one line, non-zero exit)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(config, key: str, allowed: tuple[str, ...]) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    _require(value in allowed, f"config.{key}={value!r}: expected one of {', '.join(allowed)}")


def _check_split_dims(config, mesh_sizes: dict, rules) -> None:
    """Every model dimension a logical axis splits must divide by the mesh axes it maps to;
    otherwise the run would die at initialisation in an XLA sharding error."""
    m = config.model
    hidden, heads = int(m.hidden_size), int(m.num_heads)
    dims = {  # logical axis -> the config values whose dimensions carry it (model.py)
        "embed": [("model.hidden_size", hidden)],
        "heads": [("model.num_heads", heads)],
        # (the MLM head's transform and the pooler put hidden_size on "mlp" too)
        "mlp": [
            ("model.intermediate_size", int(m.intermediate_size)),
            ("model.hidden_size", hidden),
        ],
        "kv": [("the head size model.hidden_size / model.num_heads", hidden // max(heads, 1))],
        # the vocabulary is padded to a multiple of this, whatever its size
        "vocab": [("model.pad_vocab_multiple", int(m.pad_vocab_multiple))],
    }
    for logical, axes in rules:
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        split = math.prod(mesh_sizes[a] for a in axes)
        for key, size in dims.get(logical, []) if split > 1 else []:
            _require(
                size % split == 0,
                f"config.{key}={size} must divide by {split}, the mesh axes {' x '.join(axes)} "
                f"that the logical axis {logical!r} is split over (mesh {mesh_sizes})",
            )


def _check_hosts_feed_whole_groups(mesh_sizes: dict, rules, local_devices: int, hosts: int):
    """Each host feeds its own rows of every batch (loader), so the devices that share rows
    (the mesh axes the batch is not split over, e.g. tensor) must sit on one host: a group
    spanning hosts would be handed different rows as if they were one shard."""
    if hosts <= 1:
        return
    batch = set(sharding.batch_axes(rules))
    others = {a: n for a, n in mesh_sizes.items() if a not in batch}
    group = math.prod(others.values())
    _require(
        local_devices % group == 0,
        f"config.mesh: the axes the batch is not split over ({others}) hold {group} devices per "
        f"group, more than fit whole on one host ({local_devices} devices): each host feeds "
        f"different rows, so put those axes within a host (mesh {mesh_sizes})",
    )


def validate_config(config, *, num_devices: int | None = None) -> None:
    """Structural checks that need neither data nor a tokenizer."""
    from mlm_jax import masking
    from mlm_jax.model import ModelConfig

    num_devices = jax.device_count() if num_devices is None else num_devices
    t, d, m = config.train, config.data, config.model
    with as_config_errors():
        shape = sharding.mesh_shape(config.mesh, num_devices)
    mesh_sizes = dict(zip(sharding.MESH_AXES, shape))
    rules = sharding.logical_rules(config.mesh)
    dp = math.prod(mesh_sizes[a] for a in sharding.batch_axes(rules))
    for key in ("train.batch_size", "eval.batch_size"):
        section, name = key.split(".")
        value = int(config[section][name])
        _require(
            value > 0 and value % dp == 0,
            f"config.{key}={value} must be a positive multiple of the data-parallel size {dp} "
            f"(mesh {mesh_sizes})",
        )
        _require(
            value % jax.process_count() == 0,
            f"config.{key}={value} must divide by the number of hosts {jax.process_count()}",
        )
    _check_split_dims(config, mesh_sizes, rules)
    _check_hosts_feed_whole_groups(mesh_sizes, rules, jax.local_device_count(), jax.process_count())
    micro = int(t.microbatches)
    _require(micro >= 1, f"config.train.microbatches={micro}: expected >= 1")
    _require(
        (int(t.batch_size) // dp) % micro == 0,
        f"config.train.microbatches={micro} must divide the per-shard batch "
        f"{int(t.batch_size) // dp} (train.batch_size / data-parallel size {dp})",
    )
    _require(int(t.num_steps) > 0, f"config.train.num_steps={t.num_steps}: expected > 0")
    _require(
        0 <= int(t.warmup_steps) <= int(t.num_steps),
        f"config.train.warmup_steps={t.warmup_steps}: expected 0..train.num_steps",
    )
    _require(float(t.learning_rate) > 0, f"config.train.learning_rate={t.learning_rate}: > 0")
    _choice(config, "train.lr_schedule", ("linear", "cosine", "constant"))
    _choice(config, "train.nan_policy", ("stop", "skip"))
    _require(
        int(d.seq_len) <= int(m.max_position_embeddings),
        f"config.data.seq_len={d.seq_len} exceeds config.model.max_position_embeddings="
        f"{m.max_position_embeddings}",
    )
    _require(0 < float(config.eval.mask_ratio) < 1, "config.eval.mask_ratio: expected in (0, 1)")
    for key in ("log.every_steps", "eval.every_steps", "checkpoint.every_steps"):
        section, name = key.split(".")
        _require(int(config[section][name]) >= 0, f"config.{key}: expected >= 0")
    _require(int(config.checkpoint.keep) >= 1, "config.checkpoint.keep: expected >= 1")
    with as_config_errors():
        # Without model.vocab_size the real size comes with the tokenizer, and the Trainer checks
        # the ids against it then; here any id a vocabulary could hold passes.
        vocab = int(m.vocab_size) or 1 << 30
        ModelConfig.from_config(m, vocab_size=vocab, pad_id=0)
        masking.MaskingSpec.from_config(
            config.masking,
            seq_len=int(d.seq_len),
            num_steps=int(t.num_steps),
            vocab_size=vocab,
            mask_id=4,
            special_ids=(0, 1, 2, 3, 4),
        )


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _normalise(v):
    """Tuples (a config) and lists (its JSON copy) compare equal."""
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return v


def check_resume_compatible(config, workdir: str) -> None:
    """A workdir with checkpoints resumes only under a config that means the same run."""
    if ckpt.latest_step(workdir) is None:
        return
    saved = ckpt.saved_config(workdir)
    if saved is None:
        return
    old = _flatten(saved.to_dict())
    new = _flatten(ml_collections.ConfigDict(config).to_dict())
    differ = []
    for key in sorted(set(old) | set(new)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_CHANGES):
            continue
        if key == "model.vocab_size" and new.get(key) == 0:
            continue  # resolved from the tokenizer later; checked again then
        if _normalise(old.get(key)) != _normalise(new.get(key)):
            differ.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    _require(
        not differ,
        f"{workdir} holds checkpoints of a different config ({'; '.join(differ)}); "
        "use a new workdir or the original values",
    )
    steps = (old.get("train.num_steps"), new.get("train.num_steps"))
    stretched = [
        name
        for name, key in (
            ("learning-rate", "train.lr_schedule"),
            ("masking-ratio", "masking.schedule"),
        )
        if new.get(key) != "constant"
    ]
    if steps[0] != steps[1] and stretched and (workdir, steps) not in _WARNED:
        _WARNED.add((workdir, steps))  # (the check runs again once the tokenizer is known)
        log.warning(
            "train.num_steps %s -> %s on resume: the %s schedule now spans the new length, so the "
            "steps after the checkpoint follow a different schedule than the first attempt planned",
            *steps,
            " and ".join(stretched),
        )


def resolve_config(config, tokenizer) -> ml_collections.ConfigDict:
    """A copy with the fields derived from the tokenizer filled in (model.vocab_size)."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    if int(resolved.model.vocab_size) == 0:
        resolved.model.vocab_size = int(tokenizer.vocab_size)
    _require(
        int(resolved.model.vocab_size) >= tokenizer.vocab_size,
        f"config.model.vocab_size={resolved.model.vocab_size} is smaller than the tokenizer's "
        f"vocabulary ({tokenizer.vocab_size})",
    )
    resolved.lock()
    return resolved
