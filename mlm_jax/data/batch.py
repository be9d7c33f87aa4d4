"""The batch every step reads, typed once: packing, the row store and synthetic ids all build it
here, and masking and the train step read these names.

A batch stays a dict of arrays (a pytree that grain, `jax.device_put` and `jax.jit`'s shardings
take as they are); `Batch` says which keys it has, and `token_rows` / `with_row_ids` are the
only places that give them their dtypes.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class Batch(TypedDict, total=False):
    tokens: np.ndarray  # int32 [B, L]: ids; each row is [CLS] then documents, padding 0
    document_ids: np.ndarray  # int32 [B, L]: 1, 2, ... per document within the row; 0: padding
    maskable: np.ndarray  # bool [B, L]: may be masked or predicted (not a special token)
    word_starts: np.ndarray  # bool [B, L]: a word's first token (whole_word, span)
    unit_starts: np.ndarray  # bool [B, L]: a PMI unit's first token (pmi), when data.pmi is set
    example_ids: np.ndarray  # int32 [B]: the row's id in its split: its masking key's seed
    epochs: np.ndarray  # int32 [B]: passes over the split before this row (static masking)


TOKEN_FIELDS = ("tokens", "document_ids", "maskable", "word_starts", "unit_starts")
ROW_FIELDS = ("example_ids", "epochs")


def token_rows(tokens, document_ids, maskable, word_starts, unit_starts=None) -> Batch:
    """Rows as a row source gives them ([B, L] each), before their ids are known."""
    rows = Batch(
        tokens=np.asarray(tokens, np.int32),
        document_ids=np.asarray(document_ids, np.int32),
        maskable=np.asarray(maskable, bool),
        word_starts=np.asarray(word_starts, bool),
    )
    if unit_starts is not None:
        rows["unit_starts"] = np.asarray(unit_starts, bool)
    return rows


def with_row_ids(rows: Batch, example_ids, epochs) -> Batch:
    """`rows` with the ids that key their masking (the loader's position in the split)."""
    return Batch(
        **rows, example_ids=np.asarray(example_ids, np.int32), epochs=np.asarray(epochs, np.int32)
    )
