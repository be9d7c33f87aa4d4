"""BERT tensors in Hugging Face's layout <-> our parameter tree: pure conversion, no files.

HF names tensors as BertModel / BertForMaskedLM do (`encoder.layer.{i}.attention.self.query...`,
torch Linear weights [out, in]); ours are models/bert.py's tree (qkv fused [E, 3, N, D], layers stacked
when scan_layers). A checkpoint without an MLM head (BertModel, sentence-transformers) gets a
freshly initialised head. hf/command.py reads and writes the directories.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlm_jax.hf.common import (
    GELUS,
    Conversion,
    Tensors,
    fresh_mlm_head,
    pad_rows,
    plain_params,
    read_keys,
    stack_layers,
    unstack_layers,
    write_keys,
)
from mlm_jax.models.spec import ModelSpec

# Our config.model key <- HF config.json key.
_CONFIG_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "dropout_rate": "hidden_dropout_prob",
    "attention_dropout_rate": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
}
# What HF assumes when an older config.json leaves a key out.
_HF_DEFAULTS = {
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "max_position_embeddings": 512,
}


def has_mlm_head(tensors: dict[str, np.ndarray]) -> bool:
    """Whether the checkpoint carries a trained MLM head (BertModel and sentence-transformers
    checkpoints do not)."""
    return any(k.startswith("cls.predictions.transform.") for k in tensors)


def gelu_of(hf_config: dict) -> str:
    """Our model.gelu for the checkpoint's hidden_act."""
    act = hf_config.get("hidden_act", "gelu")
    if act not in GELUS:
        raise ValueError(f"config.json hidden_act={act!r}: expected one of {sorted(GELUS)}")
    return GELUS[act]


def model_overrides(hf_config: dict) -> dict[str, Any]:
    """config.model keys that make our encoder the checkpoint's architecture."""
    gelu = gelu_of(hf_config)
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"config.json position_embedding_type={hf_config['position_embedding_type']!r}: "
            "only 'absolute' is supported"
        )
    missing = [hf for hf in _CONFIG_KEYS.values() if hf not in hf_config and hf not in _HF_DEFAULTS]
    if missing:
        raise ValueError(f"config.json: missing {missing}")
    overrides = read_keys(hf_config, _CONFIG_KEYS, _HF_DEFAULTS)
    overrides["pre_ln"] = False
    overrides["gelu"] = gelu
    overrides["arch"] = "bert"
    return overrides


# ----------------------------------------------------------------------------- HF -> ours


def _encoder_from_hf(t: Tensors, c: ModelSpec) -> dict:
    e, n, d, m = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    embeddings = {
        "word_embeddings": pad_rows(
            t.get("embeddings.word_embeddings.weight", (c.vocab_size, e)), c.padded_vocab_size
        ),
        "position_embeddings": t.get(
            "embeddings.position_embeddings.weight", (c.max_position_embeddings, e)
        ),
        "token_type_embeddings": t.get(
            "embeddings.token_type_embeddings.weight", (c.type_vocab_size, e)
        ),
        "norm": t.norm("embeddings.LayerNorm", e),
    }
    layers = []
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}."
        # torch Linear stores [out, in]; ours is [in, ...out] with heads split as N x D.
        q, k, v = (
            t.get(f"{p}attention.self.{x}.weight", (e, e)) for x in ("query", "key", "value")
        )
        qb, kb, vb = (t.get(f"{p}attention.self.{x}.bias", (e,)) for x in ("query", "key", "value"))
        layers.append(
            {
                "qkv": {
                    "kernel": np.stack([q.T, k.T, v.T], axis=1).reshape(e, 3, n, d),
                    "bias": np.stack([qb, kb, vb]).reshape(3, n, d),
                },
                "attention_out": {
                    "kernel": t.get(f"{p}attention.output.dense.weight", (e, e)).T.reshape(n, d, e),
                    "bias": t.get(f"{p}attention.output.dense.bias", (e,)),
                },
                "attention_norm": t.norm(f"{p}attention.output.LayerNorm", e),
                "mlp_in": {
                    "kernel": t.get(f"{p}intermediate.dense.weight", (m, e)).T,
                    "bias": t.get(f"{p}intermediate.dense.bias", (m,)),
                },
                "mlp_out": {
                    "kernel": t.get(f"{p}output.dense.weight", (e, m)).T,
                    "bias": t.get(f"{p}output.dense.bias", (e,)),
                },
                "mlp_norm": t.norm(f"{p}output.LayerNorm", e),
            }
        )
    return {"embeddings": embeddings, **stack_layers(layers, c)}


def _mlm_head_from_hf(t: Tensors, c: ModelSpec, word_embeddings: np.ndarray) -> dict:
    e, v = c.hidden_size, c.vocab_size
    p = "cls.predictions."
    bias_name = f"{p}bias" if f"{p}bias" in t.tensors else f"{p}decoder.bias"
    t.check_tied(f"{p}decoder.weight", word_embeddings, v)
    return {
        "transform": {
            "kernel": t.get(f"{p}transform.dense.weight", (e, e)).T,
            "bias": t.get(f"{p}transform.dense.bias", (e,)),
        },
        "norm": t.norm(f"{p}transform.LayerNorm", e),
        "output_bias": pad_rows(t.get(bias_name, (v,)), c.padded_vocab_size),
    }


def hf_to_params(
    tensors: dict[str, np.ndarray], config: ModelSpec, *, where: str = "checkpoint"
) -> dict:
    """Our BertMLM params (numpy) for `config`'s layout (scan_layers, padded vocab)."""
    if config.pre_ln:
        raise ValueError("config.model.pre_ln=True: Hugging Face BERT checkpoints are post-LN")
    t = Tensors(tensors, where)
    encoder = _encoder_from_hf(t, config)
    if has_mlm_head(tensors):
        head = _mlm_head_from_hf(t, config, encoder["embeddings"]["word_embeddings"])
    else:
        head = fresh_mlm_head(config)
    params = {"encoder": encoder, "mlm_head": head}
    if t.has("pooler.dense."):
        params["pooler"] = {
            "kernel": t.get("pooler.dense.weight", (config.hidden_size,) * 2).T,
            "bias": t.get("pooler.dense.bias", (config.hidden_size,)),
        }
    return params


def check_model(hf_config: dict, where: str, model_config: ModelSpec) -> None:
    """The checkpoint must be a BERT computing with the config's activation."""
    if model_config.arch != "bert":
        raise ValueError(
            f"{where}: a BERT checkpoint, but config.model.arch={model_config.arch!r}: "
            "set --config.model.arch=bert"
        )
    gelu = gelu_of(hf_config)
    if gelu != model_config.gelu:
        raise ValueError(
            f"{where}: config.json hidden_act={hf_config.get('hidden_act', 'gelu')!r} is the "
            f"{gelu} GELU, but config.model.gelu={model_config.gelu!r}: "
            f"set --config.model.gelu={gelu}"
        )


# ----------------------------------------------------------------------------- ours -> HF


def params_to_hf(params: Any, config: ModelSpec) -> dict[str, np.ndarray]:
    """BertForMaskedLM state dict (numpy float32) of our BertMLM params."""
    if config.pre_ln:
        raise ValueError("config.model.pre_ln=True blocks export: Hugging Face BERT is post-LN")
    params = plain_params(params)
    e, v = config.hidden_size, config.vocab_size
    emb = params["encoder"]["embeddings"]
    out = {
        "bert.embeddings.word_embeddings.weight": emb["word_embeddings"][:v],
        "bert.embeddings.position_embeddings.weight": emb["position_embeddings"],
        "bert.embeddings.token_type_embeddings.weight": emb["token_type_embeddings"],
        "bert.embeddings.LayerNorm.weight": emb["norm"]["scale"],
        "bert.embeddings.LayerNorm.bias": emb["norm"]["bias"],
    }
    for i, layer in enumerate(unstack_layers(params["encoder"], config)):
        p = f"bert.encoder.layer.{i}."
        kernel_Ex3xE = layer["qkv"]["kernel"].reshape(e, 3, e)
        bias_3xE = layer["qkv"]["bias"].reshape(3, e)
        for j, name in enumerate(("query", "key", "value")):
            out[f"{p}attention.self.{name}.weight"] = kernel_Ex3xE[:, j].T
            out[f"{p}attention.self.{name}.bias"] = bias_3xE[j]
        out[f"{p}attention.output.dense.weight"] = layer["attention_out"]["kernel"].reshape(e, e).T
        out[f"{p}attention.output.dense.bias"] = layer["attention_out"]["bias"]
        out[f"{p}attention.output.LayerNorm.weight"] = layer["attention_norm"]["scale"]
        out[f"{p}attention.output.LayerNorm.bias"] = layer["attention_norm"]["bias"]
        out[f"{p}intermediate.dense.weight"] = layer["mlp_in"]["kernel"].T
        out[f"{p}intermediate.dense.bias"] = layer["mlp_in"]["bias"]
        out[f"{p}output.dense.weight"] = layer["mlp_out"]["kernel"].T
        out[f"{p}output.dense.bias"] = layer["mlp_out"]["bias"]
        out[f"{p}output.LayerNorm.weight"] = layer["mlp_norm"]["scale"]
        out[f"{p}output.LayerNorm.bias"] = layer["mlp_norm"]["bias"]
    head = params["mlm_head"]
    out["cls.predictions.transform.dense.weight"] = head["transform"]["kernel"].T
    out["cls.predictions.transform.dense.bias"] = head["transform"]["bias"]
    out["cls.predictions.transform.LayerNorm.weight"] = head["norm"]["scale"]
    out["cls.predictions.transform.LayerNorm.bias"] = head["norm"]["bias"]
    out["cls.predictions.bias"] = head["output_bias"][:v]
    return {k: np.ascontiguousarray(x) for k, x in out.items()}


def hf_config_dict(config: ModelSpec, tokenizer: Any = None) -> dict:
    """config.json of a BertForMaskedLM with our architecture (the pad id is the spec's, so
    the tokenizer is not read)."""
    del tokenizer
    hf = write_keys(config, _CONFIG_KEYS)
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        **hf,
        "hidden_act": "gelu" if config.gelu == "exact" else "gelu_new",
        "position_embedding_type": "absolute",
        "pad_token_id": config.pad_id,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


CONVERSION = Conversion.of_module(globals(), arch="bert", model_type="bert", base_prefix="bert.")
