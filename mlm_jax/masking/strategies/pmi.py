"""pmi: PMI-masking (Levine et al., ICLR 2021): n-grams of words that co-occur far more than
their parts are one unit, taken whole like whole_word's words.

The host marks the units' starts while packing (data/pmi.py builds and loads the n-gram
vocabulary, tied to the tokenizer); masking reads them from the batch's `unit_starts`.
Its key: masking.pmi_vocab, the directory `python -m mlm_jax.data.pmi --out=DIR` wrote.
"""

from __future__ import annotations

from typing import Any

from mlm_jax.masking.strategy import HostData, Options, Prepared, Strategy


def read_config(masking_config: Any, chosen: bool) -> Options:
    """masking.pmi_vocab: required when pmi runs, and then the only option."""
    pmi_vocab = masking_config.pmi_vocab
    if not chosen:
        return ()
    if not isinstance(pmi_vocab, str) or not pmi_vocab:
        raise ValueError(
            f"config.masking.pmi_vocab={pmi_vocab!r}: expected the directory "
            "`python -m mlm_jax.data.pmi --out=DIR` wrote, with masking.strategy='pmi'"
        )
    return (("pmi_vocab", pmi_vocab),)


def prepare(spec, host: HostData) -> Prepared:
    """Loads the n-gram vocabulary (checked against the tokenizer); the packer marks its units."""
    from mlm_jax.data import pmi  # host side only

    units = pmi.load_units(spec.option("pmi_vocab"), host.tokenizer)
    return Prepared(marks=units, fingerprint=units.fingerprint)


def input_files(spec) -> dict[str, str]:
    """The vocabulary file, whose bytes a resumed run must find unchanged."""
    from mlm_jax import files
    from mlm_jax.data import pmi

    return {"pmi_vocab": files.join(spec.option("pmi_vocab"), pmi.VOCAB_FILE)}


STRATEGY = Strategy(
    name="pmi",
    doc="PMI n-gram units (needs a vocabulary built by mlm_jax.data.pmi)",
    starts_field="unit_starts",
    read_config=read_config,
    prepare=prepare,
    input_files=input_files,
    for_eval=False,
)
