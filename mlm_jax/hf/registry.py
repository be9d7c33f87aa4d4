"""Each family's Hugging Face conversion (hf/common.py's `Conversion`), by model.arch or by
config.json's model_type: the one place the hf package picks a family."""

from __future__ import annotations

from mlm_jax.hf import bert, modernbert
from mlm_jax.hf.common import Conversion

CONVERSIONS: tuple[Conversion, ...] = (bert.CONVERSION, modernbert.CONVERSION)
BY_MODEL_TYPE: dict[str, Conversion] = {c.model_type: c for c in CONVERSIONS}
BY_ARCH: dict[str, Conversion] = {c.arch: c for c in CONVERSIONS}


def for_arch(arch: str) -> Conversion:
    """The conversion of a model.arch, or one line saying the family has none."""
    if arch not in BY_ARCH:
        raise ValueError(
            f"config.model.arch={arch!r} has no Hugging Face conversion (hf/registry.py has "
            f"{', '.join(BY_ARCH)})"
        )
    return BY_ARCH[arch]
