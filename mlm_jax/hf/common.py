"""What every family's Hugging Face conversion shares: config keys both ways, tensor lookups
that name what is wrong, the padded vocabulary, stacked layers, a fresh MLM head.

hf/bert.py and hf/modernbert.py (one per family) import these; neither imports the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mlm_jax.models.spec import ModelSpec

# HF hidden_act / classifier_activation -> our model.gelu (gelu_new and gelu_pytorch_tanh are
# the same tanh formula).
GELUS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def read_keys(hf_config: dict, keys: dict[str, str], defaults: dict[str, Any]) -> dict[str, Any]:
    """config.model values from config.json: `keys` maps our key to HF's, `defaults` says
    what HF assumes for a key left out."""
    return {ours: hf_config.get(hf, defaults.get(hf)) for ours, hf in keys.items()}


def write_keys(spec: ModelSpec, keys: dict[str, str]) -> dict[str, Any]:
    """config.json values of the spec, by `keys` (our key -> HF's)."""
    return {hf: getattr(spec, ours) for ours, hf in keys.items()}


class Tensors:
    """Named lookups that fail with the tensor's name and the shape the config expects."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.tensors, self.where = tensors, where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"{self.where}: tensor {name!r} missing")
        value = self.tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{self.where}: tensor {name!r} has shape {tuple(value.shape)}, "
                f"the model config expects {tuple(shape)}"
            )
        return value.astype(np.float32)

    def norm(self, prefix: str, e: int, bias: bool = True) -> dict:
        """A norm's {scale[, bias]} from `prefix`.weight (and `prefix`.bias)."""
        out = {"scale": self.get(f"{prefix}.weight", (e,))}
        if bias:
            out["bias"] = self.get(f"{prefix}.bias", (e,))
        return out

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.tensors)

    def check_tied(self, decoder_name: str, word_embeddings: np.ndarray, vocab_size: int):
        """A decoder matrix, if the checkpoint has one, must equal the token table."""
        decoder = self.tensors.get(decoder_name)
        if decoder is not None and not np.array_equal(decoder, word_embeddings[:vocab_size]):
            raise ValueError(
                f"{self.where}: tensor {decoder_name!r} differs from the word embeddings "
                "(untied decoders are not supported)"
            )


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Zero rows for the padded vocabulary (never looked up, never predicted)."""
    return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])


def stack_layers(layers: list[dict], spec: ModelSpec) -> dict:
    """Per-layer trees as the encoder holds them: stacked under `layers` (scan_layers) or
    `layer_0`, `layer_1`, ..."""
    if spec.scan_layers:
        return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return {f"layer_{i}": layer for i, layer in enumerate(layers)}


def unstack_layers(encoder: dict, spec: ModelSpec) -> list[dict]:
    """The encoder's layers one tree each, whether stacked or not."""
    if "layers" in encoder:
        return [
            jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(spec.num_layers)
        ]
    return [encoder[f"layer_{i}"] for i in range(spec.num_layers)]


def plain_params(params: Any) -> dict:
    """Params as numpy float32, unboxed, without a {"params": ...} wrapper."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(nn.unbox(params)))
    return params["params"] if set(params) == {"params"} else params


def fresh_mlm_head(spec: ModelSpec, *, bias: bool = True, seed: int = 0) -> dict:
    """head.SparseMLMHead's parameters for a checkpoint without a head: a truncated-normal
    transform, a unit norm, zero output bias (as the model's own init); bias=False leaves out
    the transform's and the norm's biases."""
    e = spec.hidden_size
    kernel = np.random.default_rng(seed).standard_normal((e, e))
    kernel = np.clip(kernel, -2, 2) * spec.initializer_range
    head = {
        "transform": {"kernel": kernel.astype(np.float32)},
        "norm": {"scale": np.ones(e, np.float32)},
        "output_bias": np.zeros(spec.padded_vocab_size, np.float32),
    }
    if bias:
        head["transform"]["bias"] = np.zeros(e, np.float32)
        head["norm"]["bias"] = np.zeros(e, np.float32)
    return head


def special_ids(tokenizer: Any) -> dict[str, int]:
    """A config.json's special token ids from our tokenizer (or a path to its files)."""
    if not hasattr(tokenizer, "pad_id"):
        import os

        from mlm_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(os.path.expanduser(str(tokenizer)))
    cls_id, sep_id = int(tokenizer.cls_id), int(tokenizer.sep_id)
    return {
        "pad_token_id": int(tokenizer.pad_id),
        "cls_token_id": cls_id,
        "sep_token_id": sep_id,
        "bos_token_id": cls_id,
        "eos_token_id": sep_id,
    }


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A family's Hugging Face side (one per hf/<family>.py, as `CONVERSION`); hf/registry.py
    finds it by model.arch or by config.json's model_type. The functions are the module's own,
    by these names (`of_module`)."""

    arch: str  # its model.arch (models/registry.py)
    model_type: str  # config.json's model_type
    base_prefix: str  # the MLM class's prefix of the base model's tensor names ("bert.")
    # config.json -> the config.model keys that make our encoder the checkpoint's
    model_overrides: Callable[[dict], dict[str, Any]]
    # (config.json, where, spec): refuses a checkpoint the spec does not compute
    check_model: Callable[[dict, str, ModelSpec], None]
    has_mlm_head: Callable[[dict[str, np.ndarray]], bool]  # base-relative tensors -> bool
    # (base-relative tensors, spec, *, where) -> our MLM params (numpy)
    hf_to_params: Callable[..., dict]
    params_to_hf: Callable[[Any, ModelSpec], dict[str, np.ndarray]]  # -> the MLM state dict
    # (spec, tokenizer or its path) -> config.json of the MLM class
    hf_config_dict: Callable[[ModelSpec, Any], dict]

    @classmethod
    def of_module(cls, namespace: dict[str, Any], **names: str) -> Conversion:
        """A conversion module's record: `names` (arch, model_type, base_prefix) and the
        module's functions named as the fields, so a missing one fails at import:
        `CONVERSION = Conversion.of_module(globals(), arch="bert", ...)`."""
        functions = [f.name for f in dataclasses.fields(cls) if f.name not in names]
        return cls(**names, **{name: namespace[name] for name in functions})
