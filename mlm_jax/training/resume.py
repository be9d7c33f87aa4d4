"""Whether a workdir's checkpoints may resume under a config, and the config a run records.

A resumed run must mean the same run: keys that change what the state or the data mean are
refused, naming them; keys that only change how it runs (log cadence, mesh, ...) may change:
config/defaults.py tags those ON_RESUME beside their defaults. (train.num_steps lengthens or
shortens the run; its schedules stretch with it, with a warning.)
"""

from __future__ import annotations

import logging

import ml_collections

from mlm_jax.config.defaults import base_config, can_change
from mlm_jax.config.errors import ConfigError
from mlm_jax.config.keys import ON_RESUME, flatten
from mlm_jax.training import checkpoint as ckpt

log = logging.getLogger(__name__)


def _normalise(v):
    """Tuples (a config) and lists (its JSON copy) compare equal."""
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return v


# Fields a config may leave at 0 for the run to resolve (the tokenizer's size, the derived K):
# resolved_config records what they resolved to, and a resumed run keeps that (recorded_k).
RESOLVED_WHEN_0 = ("model.vocab_size", "masking.max_predictions")


def check_resume_compatible(config, workdir: str) -> ml_collections.ConfigDict | None:
    """A workdir with checkpoints resumes only under a config that means the same run.
    Returns the config its checkpoints recorded, read once here: None for a new run, empty
    for checkpoints that recorded none."""
    if ckpt.latest_step(workdir) is None:
        return None
    saved = ckpt.saved_config(workdir)
    if saved is None:
        return ml_collections.ConfigDict()
    old = flatten(saved.to_dict())
    new = flatten(ml_collections.ConfigDict(config).to_dict())
    differ = []
    defaults = flatten(base_config().to_dict())
    for key in sorted(set(old) | set(new)):
        if can_change(key, ON_RESUME):
            continue
        if key not in old and _normalise(new.get(key)) == _normalise(defaults.get(key)):
            continue  # a field added since the run started, at its default: the same run
        if key in RESOLVED_WHEN_0 and new.get(key) == 0:
            continue  # resolved by the run, which keeps what it resolved before
        if _normalise(old.get(key)) != _normalise(new.get(key)):
            differ.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if differ:
        raise ConfigError(
            f"{workdir} holds checkpoints of a different config ({'; '.join(differ)}); "
            "use a new workdir or the original values"
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
    return saved


# K as runs recorded before it was exact derived it: rounded up to a multiple of this.
LEGACY_K_MULTIPLE = 8


def recorded_k(run, config, saved) -> int:
    """The K a run trains with: config's, or when config leaves it derived (0) and the run
    resumes (`saved`: the config its checkpoints recorded, from check_resume_compatible), the
    K they were trained with, so a resume computes what the run did.

    A workdir records its resolved K (resolved_config); one recorded before that records 0,
    and its K was the derived one rounded up to LEGACY_K_MULTIPLE (capped at seq_len).
    """
    k = run.masking.max_predictions
    if int(config.masking.max_predictions) != 0 or saved is None:
        return k
    recorded = int(saved.get("masking", {}).get("max_predictions", 0))
    if recorded:
        return recorded
    return min(-(-k // LEGACY_K_MULTIPLE) * LEGACY_K_MULTIPLE, run.data.seq_len)


def resolved_config(config, run) -> ml_collections.ConfigDict:
    """A locked copy of `config` with the fields the run resolved filled in (model.vocab_size,
    from the tokenizer; masking.max_predictions, K): what config.json and every checkpoint
    record."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.model.vocab_size = run.model.vocab_size
    resolved.masking.max_predictions = run.masking.max_predictions
    resolved.lock()
    return resolved
