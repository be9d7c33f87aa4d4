"""DataSpec: config.data checked once (cheaply: no building, no reading, no JAX).

The loader, the sources and the tokenizer take this spec, never the ConfigDict. Its
constructor owns the checks of every config.data field, with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mlm_jax import files
from mlm_jax.config.fields import check_bool, check_choice, check_float, check_int
from mlm_jax.data import packing, sources
from mlm_jax.data.sources import units

MIN_SEQ_LEN = 8  # [CLS], [SEP] and room for text to mask
MIN_TRAINED_VOCAB = 64  # a trained WordPiece vocabulary needs room beyond the alphabet


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the text comes from, how it is tokenized and how it is packed into rows."""

    # (no defaults here: config/defaults.py holds them, once)
    dataset: str
    data_dir: str
    tokenizer: str
    vocab_size: int
    lowercase: bool
    seq_len: int
    packing: str
    text_unit: str
    text_field: str
    heldout_fraction: float
    prefetch: int
    num_workers: int

    def __post_init__(self):
        check_int("data.seq_len", self.seq_len, minimum=MIN_SEQ_LEN)
        check_choice("data.packing", self.packing, packing.PACKINGS)
        check_choice("data.text_unit", self.text_unit, units.TEXT_UNITS)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(
                f"config.data.text_field={self.text_field!r}: expected a field / column name"
            )
        check_float(
            "data.heldout_fraction", self.heldout_fraction, low=0, high=1, low_open=True,
            high_open=True,
        )  # fmt: skip
        check_int("data.prefetch", self.prefetch, minimum=0)
        check_bool("data.lowercase", self.lowercase)
        if self.num_workers != 0:
            # Rows are numpy slices of a memory-mapped token cache; in-process prefetch threads
            # deliver millions of tokens/s (experiments/bench_data.py), and grain's worker
            # processes would change the iterator state format that checkpoints store.
            raise ValueError(
                f"config.data.num_workers={self.num_workers!r}: only 0 (in-process prefetch "
                "threads) is supported"
            )
        if self.tokenizer:
            _check_tokenizer_path(self.tokenizer)
        else:
            check_int("data.vocab_size", self.vocab_size, minimum=MIN_TRAINED_VOCAB)
        sources.check_dataset(self)

    @classmethod
    def from_config(cls, data_config: Any, **overrides) -> DataSpec:
        """From config.data (a ConfigDict or mapping), with `overrides` of some fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: overrides.get(name, data_config[name]) for name in names})


def _check_tokenizer_path(path: str) -> None:
    local = path if files.is_remote(path) else os.path.expanduser(path)
    ok = (files.exists(local) and not files.isdir(local)) or any(
        files.exists(files.join(local, n)) for n in ("tokenizer.json", "vocab.txt")
    )
    if not ok:
        raise ValueError(
            f"config.data.tokenizer={path!r}: no such vocab.txt / tokenizer.json (or directory "
            "holding one)"
        )
