"""Pure-functional MLM masking, keyed and jit-safe: which positions a row predicts, what the model
sees there, and the ratio over a run. core.py states the rule; this package's API is below."""

from mlm_jax.masking.core import (
    EVAL_STRATEGIES,
    STRATEGIES,
    MaskedBatch,
    MaskingSpec,
    input_files,
    mask_batch,
    mask_tokens,
    masking_keys,
    prepare_host,
)
from mlm_jax.masking.schedule import ExactRatio, ratio_at_step, scheduled_ratio
from mlm_jax.masking.units import sample_span_lengths

__all__ = [
    "EVAL_STRATEGIES",
    "STRATEGIES",
    "ExactRatio",
    "MaskedBatch",
    "MaskingSpec",
    "input_files",
    "mask_batch",
    "mask_tokens",
    "masking_keys",
    "prepare_host",
    "ratio_at_step",
    "sample_span_lengths",
    "scheduled_ratio",
]
