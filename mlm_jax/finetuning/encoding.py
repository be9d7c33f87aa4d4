"""Task texts -> fixed-length token rows, as BERT's GLUE scripts encode them."""

from __future__ import annotations

import numpy as np

from mlm_jax.finetuning.tasks import Split


def encode(tokenizer, split: Split, max_len: int) -> dict[str, np.ndarray]:
    """tokens / token_types int32 [n, max_len] and labels [n]: [CLS] a [SEP] (b [SEP]), the
    longer text cut first, token types 0 then 1 (as transformers' longest_first truncation)."""
    pieces_a = [ids for ids, _ in tokenizer.encode_arrays(split.texts_a)]
    pieces_b = [ids for ids, _ in tokenizer.encode_arrays(split.texts_b)] if split.texts_b else None
    n = len(pieces_a)
    tokens = np.full((n, max_len), tokenizer.pad_id, np.int32)
    types = np.zeros((n, max_len), np.int32)
    for i in range(n):
        a = list(pieces_a[i])
        b = list(pieces_b[i]) if pieces_b else []
        room = max_len - (3 if pieces_b else 2)
        while len(a) + len(b) > room:  # cut the longer text first, as BERT's GLUE scripts do
            if len(a) > len(b):
                a.pop()
            else:
                b.pop()
        row = [tokenizer.cls_id, *a, tokenizer.sep_id]
        if pieces_b:
            types[i, len(row) : len(row) + len(b) + 1] = 1
            row += [*b, tokenizer.sep_id]
        tokens[i, : len(row)] = row
    return {"tokens": tokens, "token_types": types, "labels": split.labels.astype(np.int32)}
