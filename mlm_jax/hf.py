"""Hugging Face BERT checkpoints in and out of our parameter tree.

Import reads config.json + model.safetensors (preferred) or pytorch_model.bin (only through
torch.load(weights_only=True), so loading never runs code) in the BertModel, BertForMaskedLM
or sentence-transformers layout. A checkpoint without an MLM head (BertModel, sentence-
transformers) gets a freshly initialised head: the template's values when the trainer passes
one, otherwise truncated-normal transform, unit LayerNorm and a zero output bias (fine
for training; fill_mask refuses such a checkpoint rather than predict with that head).

Export writes what transformers.BertForMaskedLM.from_pretrained and
AutoTokenizer.from_pretrained load: model.safetensors (decoder tied to the word embeddings, as
HF saves it), config.json and the tokenizer files.

    python -m mlm_jax.hf import DIR                      # check DIR, print the config flags
    python -m mlm_jax.hf export --workdir=W --out_dir=D  # latest checkpoint of a run -> D
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mlm_jax import cli, files
from mlm_jax.model_spec import ModelSpec

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


_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


# ----------------------------------------------------------------------------- reading


def _layout_folder(directory: str, names: tuple[str, ...]) -> tuple[str, str | None]:
    """(DIR expanded, the first of DIR and DIR/0_Transformer (sentence-transformers) that holds
    one of `names`, or None), so every loader of a HF directory accepts the same layouts."""
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise ValueError(
            f"{directory!r}: not a directory (expected a Hugging Face BERT checkpoint)"
        )
    for candidate in (directory, os.path.join(directory, "0_Transformer")):
        if any(os.path.exists(os.path.join(candidate, n)) for n in names):
            return directory, candidate
    return directory, None


def _checkpoint_dir(directory: str) -> str:
    """The folder holding config.json."""
    directory, folder = _layout_folder(directory, ("config.json",))
    if folder is None:
        raise ValueError(
            f"{os.path.join(directory, 'config.json')}: missing (not a Hugging Face checkpoint)"
        )
    return folder


def tokenizer_dir(directory: str) -> str:
    """The folder holding tokenizer.json or vocab.txt."""
    directory, folder = _layout_folder(directory, ("tokenizer.json", "vocab.txt"))
    if folder is None:
        raise ValueError(f"{directory!r}: no tokenizer.json or vocab.txt (nor in 0_Transformer/)")
    return folder


def _load_weights(folder: str) -> dict[str, np.ndarray]:
    safetensors_path = os.path.join(folder, "model.safetensors")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    torch_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(safetensors_path) or os.path.exists(index_path):
        from safetensors.numpy import load_file

        if os.path.exists(safetensors_path):
            return dict(load_file(safetensors_path))
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(os.path.join(folder, shard)))
        return tensors
    if os.path.exists(torch_path):
        import torch

        state = torch.load(torch_path, map_location="cpu", weights_only=True)
        return {
            k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()
        }
    raise ValueError(f"{safetensors_path}: missing (and no pytorch_model.bin beside it)")


def read_checkpoint(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, tensors by BertModel-relative name, cls.* kept) of a BERT checkpoint."""
    folder = _checkpoint_dir(directory)
    with open(os.path.join(folder, "config.json")) as f:
        hf_config = json.load(f)
    if hf_config.get("model_type") != "bert":
        raise ValueError(
            f"{os.path.join(folder, 'config.json')}: model_type={hf_config.get('model_type')!r}, "
            "expected 'bert'"
        )
    tensors = {}
    for name, value in _load_weights(folder).items():
        name = name.removeprefix("bert.")
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        tensors[name] = np.asarray(value)
    return hf_config, tensors


def has_mlm_head(tensors: dict[str, np.ndarray]) -> bool:
    """Whether the checkpoint carries a trained MLM head (BertModel and sentence-transformers
    checkpoints do not)."""
    return any(k.startswith("cls.predictions.transform.") for k in tensors)


# HF hidden_act -> our model.gelu (gelu_new and gelu_pytorch_tanh are the same tanh formula).
_HF_ACTIVATIONS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def gelu_of(hf_config: dict) -> str:
    """Our model.gelu for the checkpoint's hidden_act."""
    act = hf_config.get("hidden_act", "gelu")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"config.json hidden_act={act!r}: expected one of {sorted(_HF_ACTIVATIONS)}"
        )
    return _HF_ACTIVATIONS[act]


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
    overrides = {ours: hf_config.get(hf, _HF_DEFAULTS.get(hf)) for ours, hf in _CONFIG_KEYS.items()}
    overrides["pre_ln"] = False
    overrides["gelu"] = gelu
    return overrides


# ----------------------------------------------------------------------------- HF -> ours


class _Tensors:
    """Named lookups that fail with the tensor's name and the shape the config expects."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.tensors, self.where = tensors, where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"{self.where}: tensor {name!r} missing")
        value = self.tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{self.where}: tensor {name!r} has shape {tuple(value.shape)}, the model config expects {tuple(shape)}"
            )
        return value.astype(np.float32)

    def norm(self, prefix: str, e: int) -> dict:
        return {
            "scale": self.get(f"{prefix}.weight", (e,)),
            "bias": self.get(f"{prefix}.bias", (e,)),
        }

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.tensors)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Zero rows for the padded vocabulary (never looked up, never predicted)."""
    return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])


def _encoder_from_hf(t: _Tensors, c: ModelSpec) -> dict:
    e, n, d, m = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    embeddings = {
        "word_embeddings": _pad_rows(
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
    encoder = {"embeddings": embeddings}
    if c.scan_layers:
        encoder["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        encoder.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    return encoder


def _mlm_head_from_hf(t: _Tensors, c: ModelSpec, word_embeddings: np.ndarray) -> dict:
    e, v = c.hidden_size, c.vocab_size
    p = "cls.predictions."
    bias_name = f"{p}bias" if f"{p}bias" in t.tensors else f"{p}decoder.bias"
    decoder = t.tensors.get(f"{p}decoder.weight")
    if decoder is not None and not np.array_equal(decoder, word_embeddings[:v]):
        raise ValueError(
            f"{t.where}: tensor '{p}decoder.weight' differs from the word embeddings "
            "(untied decoders are not supported)"
        )
    return {
        "transform": {
            "kernel": t.get(f"{p}transform.dense.weight", (e, e)).T,
            "bias": t.get(f"{p}transform.dense.bias", (e,)),
        },
        "norm": t.norm(f"{p}transform.LayerNorm", e),
        "output_bias": _pad_rows(t.get(bias_name, (v,)), c.padded_vocab_size),
    }


def _fresh_mlm_head(c: ModelSpec, seed: int = 0) -> dict:
    """Truncated-normal transform, unit LayerNorm, zero output bias (as the model's own init)."""
    e = c.hidden_size
    kernel = np.random.default_rng(seed).standard_normal((e, e))
    kernel = np.clip(kernel, -2, 2) * c.initializer_range
    return {
        "transform": {"kernel": kernel.astype(np.float32), "bias": np.zeros(e, np.float32)},
        "norm": {"scale": np.ones(e, np.float32), "bias": np.zeros(e, np.float32)},
        "output_bias": np.zeros(c.padded_vocab_size, np.float32),
    }


def hf_to_params(
    tensors: dict[str, np.ndarray], config: ModelSpec, *, where: str = "checkpoint"
) -> dict:
    """Our BertMLM params (numpy) for `config`'s layout (scan_layers, padded vocab)."""
    if config.pre_ln:
        raise ValueError("config.model.pre_ln=True: Hugging Face BERT checkpoints are post-LN")
    t = _Tensors(tensors, where)
    encoder = _encoder_from_hf(t, config)
    if has_mlm_head(tensors):
        head = _mlm_head_from_hf(t, config, encoder["embeddings"]["word_embeddings"])
    else:
        head = _fresh_mlm_head(config)
    params = {"encoder": encoder, "mlm_head": head}
    if t.has("pooler.dense."):
        params["pooler"] = {
            "kernel": t.get("pooler.dense.weight", (config.hidden_size,) * 2).T,
            "bias": t.get("pooler.dense.bias", (config.hidden_size,)),
        }
    return params


def import_hf(directory: str, *, scan_layers: bool = True, pad_vocab_multiple: int = 128):
    """(BertMLM params, config.model overrides) of a HF BERT directory.

    params also hold `pooler` when the checkpoint has one (used by the classification model).
    """
    hf_config, tensors = read_checkpoint(directory)
    overrides = model_overrides(hf_config)
    config = ModelSpec(
        **overrides,
        scan_layers=scan_layers,
        pad_vocab_multiple=pad_vocab_multiple,
        pad_id=int(hf_config.get("pad_token_id") or 0),
    )
    return hf_to_params(tensors, config, where=str(directory)), overrides


def _check_activation(hf_config: dict, directory: str, model_config: ModelSpec) -> None:
    gelu = gelu_of(hf_config)
    if gelu != model_config.gelu:
        raise ValueError(
            f"{directory}: config.json hidden_act={hf_config.get('hidden_act', 'gelu')!r} is the "
            f"{gelu} GELU, but config.model.gelu={model_config.gelu!r}: "
            f"set --config.model.gelu={gelu}"
        )


def check_init_from(directory: str, model_config: ModelSpec) -> None:
    """What can be told from config.json alone, before anything compiles: the directory is a
    HF checkpoint and its activation is the config's (weight shapes are checked at load)."""
    with open(os.path.join(_checkpoint_dir(directory), "config.json")) as f:
        _check_activation(json.load(f), directory, model_config)


def load_pretrained_params(directory: str, model_config: ModelSpec, params_template: Any) -> Any:
    """Params shaped exactly like params_template, taken from a HF checkpoint.

    The encoder (and the MLM head and pooler when the checkpoint has them) come from the
    checkpoint; anything else (a missing MLM head, a classifier) keeps the template's values.
    Raises a ValueError naming the tensor whose shape disagrees with model_config.
    """
    template = nn.unbox(params_template)
    wrapped = set(template) == {"params"}
    template = template["params"] if wrapped else template
    hf_config, tensors = read_checkpoint(directory)
    _check_activation(hf_config, directory, model_config)
    loaded = hf_to_params(tensors, model_config, where=str(directory))
    if not has_mlm_head(tensors) and "mlm_head" in template:
        loaded["mlm_head"] = _concrete_or(template["mlm_head"], loaded["mlm_head"])
        loaded["mlm_head"]["output_bias"] = np.zeros(model_config.padded_vocab_size, np.float32)
    result = {key: loaded.get(key, value) for key, value in template.items()}
    template_paths = dict(jax.tree_util.tree_flatten_with_path(template)[0])
    result_paths = dict(jax.tree_util.tree_flatten_with_path(result)[0])
    for path, leaf in template_paths.items():
        name = jax.tree_util.keystr(path)
        if path not in result_paths:
            raise ValueError(f"{directory}: parameter {name} missing from the converted checkpoint")
        if tuple(result_paths[path].shape) != tuple(leaf.shape):
            raise ValueError(
                f"{directory}: parameter {name} has shape {tuple(result_paths[path].shape)}, "
                f"the model expects {tuple(leaf.shape)}"
            )
    if set(result_paths) != set(template_paths):
        extra = sorted(jax.tree_util.keystr(p) for p in set(result_paths) - set(template_paths))
        raise ValueError(
            f"{directory}: converted checkpoint has parameters the model lacks: {extra}"
        )
    result = jax.tree.map(lambda x: np.asarray(x, np.float32), result)
    return {"params": result} if wrapped else result


def _concrete_or(template_tree, fallback_tree):
    """The template's values when they are arrays (not eval_shape structs), else the fallback."""
    leaves = jax.tree.leaves(template_tree)
    if leaves and all(isinstance(x, (np.ndarray, jax.Array)) for x in leaves):
        return jax.tree.map(np.asarray, template_tree)
    return fallback_tree


# ----------------------------------------------------------------------------- ours -> HF


def _unstacked_layers(encoder: dict, c: ModelSpec) -> list[dict]:
    if "layers" in encoder:
        return [jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(c.num_layers)]
    return [encoder[f"layer_{i}"] for i in range(c.num_layers)]


def params_to_hf(params: Any, config: ModelSpec) -> dict[str, np.ndarray]:
    """BertForMaskedLM state dict (numpy float32) of our BertMLM params."""
    if config.pre_ln:
        raise ValueError("config.model.pre_ln=True blocks export: Hugging Face BERT is post-LN")
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(nn.unbox(params)))
    if set(params) == {"params"}:
        params = params["params"]
    e, v = config.hidden_size, config.vocab_size
    emb = params["encoder"]["embeddings"]
    out = {
        "bert.embeddings.word_embeddings.weight": emb["word_embeddings"][:v],
        "bert.embeddings.position_embeddings.weight": emb["position_embeddings"],
        "bert.embeddings.token_type_embeddings.weight": emb["token_type_embeddings"],
        "bert.embeddings.LayerNorm.weight": emb["norm"]["scale"],
        "bert.embeddings.LayerNorm.bias": emb["norm"]["bias"],
    }
    for i, layer in enumerate(_unstacked_layers(params["encoder"], config)):
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


def hf_config_dict(config: ModelSpec) -> dict:
    """config.json of a BertForMaskedLM with our architecture."""
    hf = {hf_key: getattr(config, ours) for ours, hf_key in _CONFIG_KEYS.items()}
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


def export_hf(params: Any, model_config: ModelSpec, tokenizer: Any, out_dir: str) -> None:
    """Writes a BertForMaskedLM directory: model.safetensors, config.json, tokenizer files.

    tokenizer: an mlm_jax Tokenizer (saved with .save) or a path to tokenizer files to copy.
    """
    from safetensors.numpy import save_file

    state = params_to_hf(params, model_config)
    os.makedirs(out_dir, exist_ok=True)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config_dict(model_config), f, indent=2)
    if hasattr(tokenizer, "save"):
        tokenizer.save(out_dir)
        return
    source = os.path.expanduser(str(tokenizer))
    files = (
        [source] if os.path.isfile(source) else [os.path.join(source, n) for n in _TOKENIZER_FILES]
    )
    files = [f for f in files if os.path.exists(f)]
    if not files:
        raise ValueError(f"tokenizer={source!r}: no tokenizer.json or vocab.txt there to copy")
    for f in files:
        shutil.copy(f, os.path.join(out_dir, os.path.basename(f)))


def export_workdir(workdir: str, out_dir: str) -> None:
    """Exports the latest checkpoint of a training run (with the run's tokenizer)."""
    from mlm_jax.checkpoint import load_trained
    from mlm_jax.data.tokenizer import load_tokenizer

    params, config = load_trained(workdir)
    tokenizer = load_tokenizer(files.join(workdir, "tokenizer"))
    model_config = ModelSpec.from_config(config.model).with_vocab(tokenizer)
    export_hf(params, model_config, tokenizer, out_dir)


# ----------------------------------------------------------------------------- CLI


def _print_import_flags(directory: str) -> None:
    params, overrides = import_hf(directory)
    count = sum(x.size for x in jax.tree.leaves(params))
    flags = [f"--config.model.init_from={directory}"]
    flags += [f"--config.model.{k}={v}" for k, v in overrides.items()]
    try:
        folder = tokenizer_dir(directory)
    except ValueError:
        folder = None  # no tokenizer beside the weights: the run names its own
    if folder:
        name = (
            "tokenizer.json"
            if os.path.exists(os.path.join(folder, "tokenizer.json"))
            else "vocab.txt"
        )
        flags.append(f"--config.data.tokenizer={os.path.join(folder, name)}")
    print(f"{directory}: BERT with {count:,} parameters; start a run from it with")
    print("  " + " \\\n  ".join(flags))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlm_jax.hf", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import", help="check a HF BERT directory and print the config flags to start from it"
    )
    imp.add_argument("directory")
    exp = sub.add_parser("export", help="export a run's latest checkpoint as a HF BertForMaskedLM")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        if args.command == "import":
            _print_import_flags(args.directory)
        else:
            export_workdir(args.workdir, args.out_dir)
            print(f"wrote {args.out_dir} (BertForMaskedLM + tokenizer)")


if __name__ == "__main__":
    main(sys.argv[1:])
