"""ModernBERT tensors in Hugging Face's layout <-> our parameter tree: pure conversion, no files.

HF names tensors as ModernBertModel / ModernBertForMaskedLM do (`layers.{i}.attn.Wqkv`, torch
Linear weights [out, in], `model.` prefixed in the MLM class); ours are models/modernbert.py's tree.
config.json is read in both of transformers' forms: 5.x (`layer_types`, `rope_parameters`) and
4.5x (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`); the export writes
both, so either line of transformers opens it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlm_jax.hf import common
from mlm_jax.models.modernbert import is_global_layer
from mlm_jax.models.spec import ModelSpec

_CONFIG_KEYS = {  # our config.model key <- HF config.json key
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "layer_norm_eps": "norm_eps",
    "initializer_range": "initializer_range",
    "local_window": "local_attention",
    "attention_dropout_rate": "attention_dropout",
    "dropout_rate": "mlp_dropout",
}
_HF_DEFAULTS = {  # what ModernBertConfig assumes for a key left out
    "max_position_embeddings": 8192,
    "norm_eps": 1e-5,
    "initializer_range": 0.02,
    "local_attention": 128,
    "attention_dropout": 0.0,
    "mlp_dropout": 0.0,
    "hidden_activation": "gelu",
    "classifier_activation": "gelu",
}
_NO_BIAS = ("norm_bias", "attention_bias", "mlp_bias")  # biases our blocks do not have


def has_mlm_head(tensors: dict[str, np.ndarray]) -> bool:
    return any(k.startswith("head.dense.") for k in tensors)


def _layer_pattern(hf_config: dict, where: str) -> int:
    """global_every of config.json's layer_types (5.x) or global_attn_every_n_layers (4.5x);
    a pattern not of the form 'global every n layers from layer 0' is refused."""
    layers = hf_config["num_hidden_layers"]
    types = hf_config.get("layer_types")
    if not types:
        return int(hf_config.get("global_attn_every_n_layers", 3))
    globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
    every = globals_[1] - globals_[0] if len(globals_) > 1 else layers
    expected = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]
    if not globals_ or globals_[0] != 0 or list(types) != expected:
        raise ValueError(
            f"{where}: config.json layer_types={types}: expected global attention every n "
            "layers from layer 0 (the pattern model.global_every describes)"
        )
    return min(every, layers)


def _thetas(hf_config: dict) -> tuple[float, float]:
    rope = hf_config.get("rope_parameters") or {}
    global_theta = (rope.get("full_attention") or {}).get(
        "rope_theta", hf_config.get("global_rope_theta", 160_000.0)
    )
    local_theta = (rope.get("sliding_attention") or {}).get(
        "rope_theta", hf_config.get("local_rope_theta", 10_000.0)
    )
    for part in rope.values():
        if part and part.get("rope_type", "default") != "default":
            raise ValueError(f"config.json rope_parameters={rope}: only rope_type 'default'")
    return float(global_theta), float(local_theta)


def model_overrides(hf_config: dict, where: str = "config.json") -> dict[str, Any]:
    """config.model keys that make our encoder the checkpoint's ModernBERT."""
    for key in _NO_BIAS:
        if hf_config.get(key):
            raise ValueError(f"{where}: config.json {key}=true: our ModernBERT has no such bias")
    head_act = hf_config.get("classifier_activation", "gelu")
    glu_act = hf_config.get("hidden_activation", "gelu")
    if head_act not in common.GELUS:
        raise ValueError(
            f"{where}: config.json classifier_activation={head_act!r}: expected one of "
            f"{sorted(common.GELUS)}"
        )
    if glu_act not in ("silu", head_act):
        raise ValueError(
            f"{where}: config.json hidden_activation={glu_act!r}: expected 'silu' or the "
            f"classifier_activation {head_act!r}"
        )
    missing = [
        k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
        if k not in hf_config
    ]  # fmt: skip
    if missing:
        raise ValueError(f"{where}: config.json: missing {missing}")
    overrides = common.read_keys(hf_config, _CONFIG_KEYS, _HF_DEFAULTS)
    overrides["intermediate_size"] = hf_config.get("intermediate_size", 1152)
    global_theta, local_theta = _thetas(hf_config)
    overrides.update(
        arch="modernbert",
        global_every=_layer_pattern(hf_config, where),
        global_rope_theta=global_theta,
        local_rope_theta=local_theta,
        gelu=common.GELUS[head_act],
        glu_activation="silu" if glu_act == "silu" else "gelu",
        norm="layernorm",
        type_vocab_size=1,
    )
    return overrides


def check_model(hf_config: dict, where: str, spec: ModelSpec) -> None:
    """A checkpoint must be the architecture the config computes (init_from, fine-tuning)."""
    overrides = model_overrides(hf_config, where)
    for key in ("arch", "global_every", "global_rope_theta", "local_rope_theta", "local_window",
                "gelu", "glu_activation", "norm"):  # fmt: skip
        if getattr(spec, key) != overrides[key]:
            raise ValueError(
                f"{where}: the checkpoint has model.{key}={overrides[key]!r}, the config "
                f"config.model.{key}={getattr(spec, key)!r}: set --config.model.{key}="
                f"{overrides[key]}"
            )


# ----------------------------------------------------------------------------- HF -> ours


def hf_to_params(
    tensors: dict[str, np.ndarray], c: ModelSpec, *, where: str = "checkpoint"
) -> dict:
    """Our ModernBertMLM params (numpy) for `c`'s layout from ModernBertModel-relative names."""
    t = common.Tensors(tensors, where)
    e, n, d, m, v = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size, c.vocab_size
    word = common.pad_rows(t.get("embeddings.tok_embeddings.weight", (v, e)), c.padded_vocab_size)
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}."
        attention_norm = (
            {"scale": np.ones(e, np.float32)} if i == 0 else {"scale": t.get(f"{p}attn_norm.weight", (e,))}
        )  # fmt: skip
        layers.append(
            {
                "attention_norm": attention_norm,
                "qkv": {"kernel": t.get(f"{p}attn.Wqkv.weight", (3 * e, e)).T.reshape(e, 3, n, d)},
                "attention_out": {"kernel": t.get(f"{p}attn.Wo.weight", (e, e)).T.reshape(n, d, e)},
                "mlp_norm": {"scale": t.get(f"{p}mlp_norm.weight", (e,))},
                "mlp_in": {"kernel": t.get(f"{p}mlp.Wi.weight", (2 * m, e)).T.reshape(e, 2, m)},
                "mlp_out": {"kernel": t.get(f"{p}mlp.Wo.weight", (e, m)).T},
            }
        )
    encoder = {
        "embeddings": {"word_embeddings": word, "norm": t.norm("embeddings.norm", e, bias=False)},
        "final_norm": t.norm("final_norm", e, bias=False),
        **common.stack_layers(layers, c),
    }
    if has_mlm_head(tensors):
        t.check_tied("decoder.weight", word, v)
        head = {
            "transform": {"kernel": t.get("head.dense.weight", (e, e)).T},
            "norm": {"scale": t.get("head.norm.weight", (e,))},
            "output_bias": common.pad_rows(t.get("decoder.bias", (v,)), c.padded_vocab_size),
        }
    else:
        head = common.fresh_mlm_head(c, bias=False)
    return {"encoder": encoder, "mlm_head": head}


# ----------------------------------------------------------------------------- ours -> HF


def params_to_hf(params: dict, c: ModelSpec) -> dict[str, np.ndarray]:
    """ModernBertForMaskedLM state dict (numpy float32; the decoder tied, so left out)."""
    if c.norm != "layernorm":
        raise ValueError(
            f"config.model.norm={c.norm!r} blocks export: transformers' ModernBERT has "
            "LayerNorm only"
        )
    params = common.plain_params(params)
    e, v, enc = c.hidden_size, c.vocab_size, params["encoder"]
    out = {
        "model.embeddings.tok_embeddings.weight": enc["embeddings"]["word_embeddings"][:v],
        "model.embeddings.norm.weight": enc["embeddings"]["norm"]["scale"],
        "model.final_norm.weight": enc["final_norm"]["scale"],
    }
    for i, layer in enumerate(common.unstack_layers(enc, c)):
        p = f"model.layers.{i}."
        if i > 0:
            out[f"{p}attn_norm.weight"] = layer["attention_norm"]["scale"]
        out[f"{p}attn.Wqkv.weight"] = layer["qkv"]["kernel"].reshape(e, 3 * e).T
        out[f"{p}attn.Wo.weight"] = layer["attention_out"]["kernel"].reshape(e, e).T
        out[f"{p}mlp_norm.weight"] = layer["mlp_norm"]["scale"]
        out[f"{p}mlp.Wi.weight"] = layer["mlp_in"]["kernel"].reshape(e, -1).T
        out[f"{p}mlp.Wo.weight"] = layer["mlp_out"]["kernel"].T
    head = params["mlm_head"]
    out["head.dense.weight"] = head["transform"]["kernel"].T
    out["head.norm.weight"] = head["norm"]["scale"]
    out["decoder.bias"] = head["output_bias"][:v]
    return {k: np.ascontiguousarray(x, np.float32) for k, x in out.items()}


def hf_config_dict(c: ModelSpec, tokenizer: Any) -> dict:
    """config.json of a ModernBertForMaskedLM with our architecture, in both transformers
    forms (5.x reads layer_types and rope_parameters, 4.5x the older keys), with the
    tokenizer's special ids (ModernBertConfig's defaults are ModernBERT's own vocabulary's)."""
    head_act = "gelu" if c.gelu == "exact" else "gelu_pytorch_tanh"
    layer_types = [
        "full_attention" if is_global_layer(c, i) else "sliding_attention"
        for i in range(c.num_layers)
    ]
    hf = common.write_keys(c, _CONFIG_KEYS)
    return {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        **hf,
        "embedding_dropout": c.dropout_rate,
        "hidden_activation": "silu" if c.glu_activation == "silu" else head_act,
        "classifier_activation": head_act,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "decoder_bias": True,
        "classifier_bias": False,
        "global_attn_every_n_layers": c.global_every,
        "global_rope_theta": c.global_rope_theta,
        "local_rope_theta": c.local_rope_theta,
        "layer_types": layer_types,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": c.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": c.local_rope_theta},
        },
        **common.special_ids(tokenizer),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


CONVERSION = common.Conversion.of_module(
    globals(), arch="modernbert", model_type="modernbert", base_prefix="model."
)
