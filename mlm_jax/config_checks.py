"""The config checks that span sections (mesh x model x batch, resume compatibility).

Each section's own fields are checked by its spec (run_spec.py says which); these need several
at once. Every failure is one ValueError line naming the key, the value and what was expected.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from mlm_jax import checkpoint as ckpt
from mlm_jax import sharding
from mlm_jax.config_defaults import base_config

if TYPE_CHECKING:
    from mlm_jax.model_spec import ModelSpec
    from mlm_jax.run_spec import RunSpec

log = logging.getLogger(__name__)

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


def check_run(run: RunSpec, *, local_devices: int, num_hosts: int) -> None:
    """The checks that span sections: the mesh against the model's dimensions and the batch
    sizes, the sequence length against the model, hosts against mesh groups."""
    mesh = run.mesh
    sizes, dp = mesh.sizes, mesh.data_parallel_size
    for key, value in (
        ("train.batch_size", run.train.batch_size),
        ("eval.batch_size", run.train.eval_batch_size),
    ):
        _require(
            value % dp == 0,
            f"config.{key}={value} must be a positive multiple of the data-parallel size {dp} "
            f"(mesh {sizes})",
        )
        _require(
            value % num_hosts == 0,
            f"config.{key}={value} must divide by the number of hosts {num_hosts}",
        )
    micro = run.train.microbatches
    _require(
        (run.train.batch_size // dp) % micro == 0,
        f"config.train.microbatches={micro} must divide the per-shard batch "
        f"{run.train.batch_size // dp} (train.batch_size / data-parallel size {dp})",
    )
    _require(
        run.data.seq_len <= run.model.max_position_embeddings,
        f"config.data.seq_len={run.data.seq_len} exceeds config.model.max_position_embeddings="
        f"{run.model.max_position_embeddings}",
    )
    if run.model.has_local_layers:
        half = run.model.local_window // 2
        _require(
            half < run.data.seq_len - 1,
            f"config.model.local_window={run.model.local_window} covers every "
            f"{run.data.seq_len}-token row (+-{half}), so its local layers would be global: "
            f"expected a window below {2 * (run.data.seq_len - 1)}, or model.global_every=1",
        )
    _check_split_dims(run.model, mesh)
    _check_hosts_feed_whole_groups(mesh, local_devices, num_hosts)
    _check_ratios_select_something(run)


def _check_ratios_select_something(run: RunSpec) -> None:
    """A ratio that selects no token of a full row trains on nothing (loss 0.0, which reads as
    a perfect score) or evaluates on nothing."""
    full = run.data.seq_len - 2  # a full row's maskable tokens: all but [CLS] and [SEP]
    m = run.masking
    ratios = [("masking.ratio", m.ratio), ("eval.mask_ratio", run.eval_masking.ratio)]
    if m.schedule in ("linear", "cosine"):
        ratios.append(("masking.end_ratio", m.end_ratio))
    ratios += [("masking.piecewise", ratio) for _, ratio in m.pieces]
    for key, ratio in ratios:
        spec = run.eval_masking if key.startswith("eval.") else m
        _require(
            round(ratio * full) > 0 or spec.min_predictions > 0,
            f"config.{key}={ratio} selects round({ratio} x {full}) = 0 of the {full} maskable "
            f"tokens of a full {run.data.seq_len}-token row, so no position would be predicted; "
            f"expected a ratio above {0.5 / full:.3g} (or masking.min_predictions >= 1)",
        )


def check_eval_batches(run: RunSpec, host_batches: list[dict]) -> None:
    """Refuses held-out batches in which the eval masking would select nothing (a loss over no
    prediction is not a score), before anything compiles."""
    spec = run.eval_masking
    excluded = list(spec.special_ids + spec.never_mask_ids)
    predicted = 0
    for batch in host_batches:
        eligible = (batch["maskable"] & ~np.isin(batch["tokens"], excluded)).sum(axis=1)
        floor = np.minimum(eligible, spec.min_predictions)
        predicted += int(np.maximum(np.round(spec.ratio * eligible), floor).sum())
    _require(
        predicted > 0,
        f"the held-out batches ({len(host_batches)} of {run.train.eval_batch_size} rows) hold "
        f"no token the eval masking (eval.mask_ratio={spec.ratio}) would select: add held-out "
        "text (data.heldout_fraction) or longer documents",
    )


def _check_split_dims(model: ModelSpec, mesh: sharding.MeshSpec) -> None:
    """Every model dimension a logical axis splits must divide by the mesh axes it maps to;
    otherwise the run would die at initialisation in an XLA sharding error."""
    dims = model.split_dims()
    for logical, axes in mesh.rules:
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        split = math.prod(mesh.sizes[a] for a in axes)
        for key, size in dims.get(logical, []) if split > 1 else []:
            _require(
                size % split == 0,
                f"config.{key}={size} must divide by {split}, the mesh axes {' x '.join(axes)} "
                f"that the logical axis {logical!r} is split over (mesh {mesh.sizes})",
            )


def _check_hosts_feed_whole_groups(mesh: sharding.MeshSpec, local_devices: int, hosts: int):
    """Each host feeds its own rows of every batch (loader), so the devices that share rows
    (the mesh axes the batch is not split over, e.g. tensor) must sit on one host: a group
    spanning hosts would be handed different rows as if they were one shard."""
    if hosts <= 1:
        return
    batch = set(sharding.batch_axes(mesh.rules))
    others = {a: n for a, n in mesh.sizes.items() if a not in batch}
    group = math.prod(others.values())
    _require(
        local_devices % group == 0,
        f"config.mesh: the axes the batch is not split over ({others}) hold {group} devices per "
        f"group, more than fit whole on one host ({local_devices} devices): each host feeds "
        f"different rows, so put those axes within a host (mesh {mesh.sizes})",
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
    defaults = _flatten(base_config().to_dict())
    for key in sorted(set(old) | set(new)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_CHANGES):
            continue
        if key not in old and _normalise(new.get(key)) == _normalise(defaults.get(key)):
            continue  # a field added since the run started, at its default: the same run
        if key == "model.vocab_size" and new.get(key) == 0:
            continue  # 0 = the tokenizer's size, and a resumed run keeps its tokenizer
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
        if new.get(key) not in ("constant", "piecewise")  # piecewise: steps, not a fraction
    ]
    if steps[0] != steps[1] and stretched:
        log.warning(
            "train.num_steps %s -> %s on resume: the %s schedule now spans the new length, so the "
            "steps after the checkpoint follow a different schedule than the first attempt planned",
            *steps,
            " and ".join(stretched),
        )


def resolved_config(config, run: RunSpec) -> ml_collections.ConfigDict:
    """A locked copy of `config` with the fields the tokenizer decided filled in
    (model.vocab_size): what config.json and every checkpoint record."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.model.vocab_size = run.model.vocab_size
    resolved.lock()
    return resolved
