"""rows:<dir>: a store of rows packed once by mlm_jax.data.prepare (the format: data/rows.py).

It holds rows, not documents: the loader reads them by id (data/rows.py's StoreRows) with the
store's own tokenizer, and nothing is tokenized or cached. The check reads the manifest only.
"""

from __future__ import annotations

from mlm_jax.data import rows
from mlm_jax.data.sources.core import Source


def _check(arg: str, data) -> None:
    del arg  # rows.check_store reads the folder from data.dataset
    rows.check_store(data)


SOURCE = Source(usage="rows:<dir>", check=_check, corpus=None, prepared_rows=True)
