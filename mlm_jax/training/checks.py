"""The config checks that span sections (mesh x model x batch, hosts, held-out batches).

Each section's own fields are checked by its spec (training/spec.py says which); these need several
at once. Every failure is one ValueError line naming the key, the value and what was expected.
"""

from __future__ import annotations

import math

import numpy as np

from mlm_jax.config.errors import ConfigError
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import sharding
from mlm_jax.training.spec import RunSpec


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
