"""tfds:<name>[:<feature>]: any prepared TFDS text dataset stored as ArrayRecord (random access,
no TensorFlow), its `feature` (default `text`) read as the documents.

The first of HELDOUT_SPLITS the dataset has is held out; a dataset with neither holds out the
last data.heldout_fraction of its train split (TFDS shuffled it when it was built).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from mlm_jax.data.sources.core import Corpus, DocumentSource, Source, data_dir

HELDOUT_SPLITS = ("validation", "test")


def _parse(arg: str) -> tuple[str, str]:
    name, _, feature = arg.partition(":")
    return name, feature or "text"


def _builder(arg: str, data) -> tfds.core.DatasetBuilder:
    """The dataset's builder, once it is known to be prepared, random-access and to have the
    feature and a train split (else one line saying how to build it)."""
    name, feature = _parse(arg)
    directory = data_dir(data)
    how = (
        f"build it first: tfds build {name.split('/')[0]} --data_dir={directory} "
        "--file_format=array_record"
    )
    try:
        builder = tfds.builder(name, data_dir=directory)
    except Exception as e:  # DatasetNotFoundError and friends, all one line for the user
        raise ValueError(
            f"data.dataset='tfds:{name}': unknown TFDS dataset ({type(e).__name__}); {how}"
        ) from None
    if not builder.is_prepared():
        raise ValueError(f"data.dataset='tfds:{name}': not prepared in {directory}; {how}")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise ValueError(
            f"data.dataset='tfds:{name}': stored as {file_format}, random access needs array_record; {how}"
        )
    if feature not in builder.info.features.keys():
        raise ValueError(
            f"data.dataset='tfds:{name}:{feature}': no feature {feature!r}; "
            f"it has {sorted(builder.info.features.keys())}"
        )
    if "train" not in builder.info.splits:
        raise ValueError(
            f"data.dataset='tfds:{name}': no 'train' split (has {list(builder.info.splits)})"
        )
    return builder


def _corpus(arg: str, data) -> Corpus:
    name, feature = _parse(arg)
    builder = _builder(arg, data)
    splits = builder.as_data_source()
    train = splits["train"]
    key = f"tfds-{name.replace('/', '_')}-{builder.info.version}-{feature}"
    heldout_name = next((s for s in HELDOUT_SPLITS if s in splits), None)
    if heldout_name is not None:
        return Corpus(
            key, DocumentSource(train, feature), DocumentSource(splits[heldout_name], feature)
        )
    n_heldout = max(1, round(len(train) * data.heldout_fraction))
    cut = len(train) - n_heldout
    return Corpus(
        f"{key}-h{data.heldout_fraction!r}",
        DocumentSource(train, feature, 0, cut),
        DocumentSource(train, feature, cut, len(train)),
    )


SOURCE = Source(usage="tfds:<name>[:<feature>]", check=_builder, corpus=_corpus)
