"""The model to fine-tune: an encoder from a run or a Hugging Face directory, and its classifier.

The classifier starts fresh; so does the pooler from a run directory (MLM pretraining does not
train one), while a Hugging Face checkpoint's pooler is loaded, as transformers'
BertForSequenceClassification loads it. `weights=False` keeps the architecture and tokenizer but
not the weights: the random-init baseline that tells what pretraining bought.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlm_jax import files
from mlm_jax.training import pretrained as pretrained_lib


def load_encoder(
    path: str, tokenizer_path: str = "", *, weights: bool = True
) -> pretrained_lib.Pretrained:
    """A run directory or a Hugging Face directory (pretrained_lib.load), or, with path '', the
    default architecture with no weights (params {}) and the tokenizer given."""
    from mlm_jax.config.defaults import base_config
    from mlm_jax.data.tokenizer import load_tokenizer
    from mlm_jax.models.spec import ModelSpec

    if not path:  # from scratch with the default architecture and a given tokenizer
        if not tokenizer_path:
            raise ValueError("--pretrained='' needs --tokenizer=PATH (vocab.txt or a directory)")
        tokenizer = load_tokenizer(tokenizer_path)
        spec = ModelSpec.from_config(base_config().model).with_vocab(tokenizer)
        return pretrained_lib.Pretrained(spec, {}, tokenizer, 128, has_mlm_head=False, where="")
    if not files.isdir(path):
        raise ValueError(f"--pretrained={path!r} is not a directory")
    return pretrained_lib.load(path, tokenizer=tokenizer_path, weights=weights)


def classifier(spec, num_labels: int, pooling: str):
    """The family's sequence classifier (models.registry), refusing a pooling it lacks."""
    from mlm_jax.models.registry import classifier as family_classifier

    return family_classifier(spec, num_labels, pooling)


def init_params(model, source: pretrained_lib.Pretrained | None, seq_len: int, seed: int):
    """The classifier's parameters: fresh, then the encoder (and a HF checkpoint's pooler) of
    `source` where it has weights (pretrained_lib.fit); None or no weights keeps them all fresh."""
    import flax.linen as nn

    tokens = jnp.zeros((1, seq_len), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), tokens))["params"]
    if source is None or not source.params:
        return params
    return jax.tree.map(jnp.asarray, pretrained_lib.fit(source, params))
