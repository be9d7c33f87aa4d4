"""data/batch.py: the one schema of a batch, and the producers that build it."""

from __future__ import annotations

import numpy as np

from mlm_jax.data.batch import ROW_FIELDS, TOKEN_FIELDS, Batch, token_rows, with_row_ids
from mlm_jax.training.synthetic import synthetic_batch

DTYPES = {"tokens": np.int32, "document_ids": np.int32, "example_ids": np.int32,
          "epochs": np.int32}  # fmt: skip


def _check(batch: dict, rows: int, seq_len: int) -> None:
    for name, array in batch.items():
        assert name in Batch.__annotations__, name
        assert array.dtype == DTYPES.get(name, np.bool_), name
        assert array.shape == ((rows, seq_len) if name in TOKEN_FIELDS else (rows,)), name


def test_every_field_of_the_type_is_a_token_or_a_row_field():
    assert set(Batch.__annotations__) == set(TOKEN_FIELDS + ROW_FIELDS)


def test_token_rows_casts_what_a_source_gives():
    tokens = np.array([[2, 7, 8, 3]], np.int64)  # a store's uint16 / int64 ids
    rows = token_rows(tokens, np.array([[1, 1, 1, 1]], np.uint16), tokens > 3, [[0, 1, 0, 0]])
    assert "unit_starts" not in rows  # only where data.pmi made them
    batch = with_row_ids(rows, np.array([5], np.int64), [0])
    _check(batch, 1, 4)
    assert batch["maskable"].tolist() == [[False, True, True, False]]
    units = token_rows(tokens, tokens, tokens > 3, tokens > 3, unit_starts=tokens > 7)
    assert units["unit_starts"].tolist() == [[False, False, True, False]]


def test_synthetic_batches_are_batches():
    batch = synthetic_batch(4, 16, 100)
    _check(batch, 4, 16)
    assert set(batch) == set(TOKEN_FIELDS + ROW_FIELDS) - {"unit_starts"}
