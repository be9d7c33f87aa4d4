"""Dotted config keys ('train.b2'), and what may change about each without making another run.

config/defaults.py writes that beside the key's default: `t.num_steps = may_change(3000,
ON_RESUME)`. A resumed run may change the keys tagged ON_RESUME (they do not alter what the
state or the data mean); a phase (model.init_from a run directory of this project) may change
the model keys tagged BETWEEN_PHASES. COMPUTE_ONLY keys say how to compute, not what, so they
may change in both cases. Every other key must stay as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

ON_RESUME = "on resume"  # may differ when a workdir's checkpoints resume
BETWEEN_PHASES = "between phases"  # model.*: may differ from the run model.init_from starts from
COMPUTE_ONLY = "compute only"  # how to compute, not what: may change on resume and between phases
_IMPLIED = {COMPUTE_ONLY: (ON_RESUME, BETWEEN_PHASES)}


@dataclasses.dataclass(frozen=True)
class MayChange:
    """A default, tagged with when its key may change (config/defaults.py unwraps it)."""

    value: Any
    when: frozenset[str]


def may_change(value: Any, *when: str) -> MayChange:
    """`value` as a default whose key may change `when` (ON_RESUME, BETWEEN_PHASES,
    COMPUTE_ONLY)."""
    unknown = set(when) - {ON_RESUME, BETWEEN_PHASES, COMPUTE_ONLY}
    if unknown or not when:
        raise ValueError(f"may_change({value!r}, {when}): expected some of ON_RESUME, ...")
    implied = {w for tag in when for w in _IMPLIED.get(tag, ())}
    return MayChange(value, frozenset(when) | implied)


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'section': {'key': v}} (a ConfigDict or a dict) -> {'section.key': v}, in its order."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unwrap(tagged: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, dict]:
    """A config whose defaults may be MayChange -> (the plain config, {dotted key: when})."""
    when = {}

    def plain(section: Mapping, prefix: str) -> dict:
        out = {}
        for key, value in section.items():
            if isinstance(value, Mapping | ml_collections.ConfigDict):
                out[key] = plain(value, f"{prefix}{key}.")
            elif isinstance(value, MayChange):
                out[key], when[f"{prefix}{key}"] = value.value, value.when
            else:
                out[key] = value
        return out

    return ml_collections.ConfigDict(plain(tagged, "")), when
