"""Hugging Face BERT and ModernBERT directories on disk: find, read and write them (conversion:
hf/bert.py, hf/modernbert.py; `family` picks one by config.json's model_type).

Reading takes config.json + model.safetensors (preferred, sharded or not) or pytorch_model.bin
(only through torch.load(weights_only=True), so loading never runs code), in the BertModel,
BertForMaskedLM or sentence-transformers (`0_Transformer/`) layout. Writing produces what
transformers.BertForMaskedLM.from_pretrained and AutoTokenizer.from_pretrained load:
model.safetensors (decoder tied to the word embeddings, as HF saves it), config.json and the
tokenizer files.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from mlm_jax import checksums
from mlm_jax.hf import export_dir, registry
from mlm_jax.hf.common import Conversion
from mlm_jax.models.spec import ModelSpec

_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


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


def checkpoint_folder(directory: str) -> str:
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
    if os.path.exists(safetensors_path):
        return _read_safetensors(safetensors_path)
    if os.path.exists(index_path):
        tensors = {}
        for shard in _index_shards(index_path):
            tensors.update(_read_safetensors(os.path.join(folder, shard)))
        return tensors
    if os.path.exists(torch_path):
        return _read_torch_bin(torch_path)
    raise ValueError(f"{safetensors_path}: missing (and no pytorch_model.bin beside it)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A safetensors file's tensors; a truncated or garbage file is one ValueError line."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _index_shards(index_path: str) -> list[str]:
    try:
        with open(index_path) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index_path}: not a safetensors index (no weight_map: {e})") from None


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    """pytorch_model.bin, only through torch.load(weights_only=True): a pickle that would run
    code, or a damaged file, is one ValueError line."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading pytorch_model.bin needs torch (pip install torch), "
                         "or convert it to model.safetensors") from None  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {
            k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()
        }
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not loadable as plain weights ({first}); convert it to model.safetensors"
        ) from None


def family(hf_config: dict) -> Conversion:
    """The family's conversion (hf/common.py) of a config.json read by read_config."""
    return registry.BY_MODEL_TYPE[hf_config["model_type"]]


def read_config(directory: str) -> dict:
    """The checkpoint's config.json, which must describe a BERT or a ModernBERT."""
    path = os.path.join(checkpoint_folder(directory), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON config ({e})") from None
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    if model_type not in registry.BY_MODEL_TYPE:
        raise ValueError(
            f"{path}: model_type={model_type!r}, expected one of "
            f"{', '.join(repr(k) for k in registry.BY_MODEL_TYPE)}"
        )
    return hf_config


def read_checkpoint(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, tensors by base-model-relative name (BertModel's, ModernBertModel's),
    the MLM head's kept) of a checkpoint."""
    hf_config = read_config(directory)
    folder = checkpoint_folder(directory)
    checksums.verify_dir(folder)  # an export of this project: its bytes as written
    prefix = family(hf_config).base_prefix
    tensors = {}
    for name, value in _load_weights(folder).items():
        name = name.removeprefix(prefix)
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        tensors[name] = np.asarray(value)
    return hf_config, tensors


def export_hf(
    params: Any, model_config: ModelSpec, tokenizer: Any, out_dir: str, card: str = ""
) -> None:
    """Writes a BertForMaskedLM or ModernBertForMaskedLM directory (by model.arch):
    model.safetensors, config.json, tokenizer files, and `card` as README.md when given.

    tokenizer: an mlm_jax Tokenizer (saved with .save) or a path to tokenizer files to copy.
    """
    from safetensors.numpy import save_file

    conversion = registry.for_arch(model_config.arch)
    state = conversion.params_to_hf(params, model_config)
    hf_config = conversion.hf_config_dict(model_config, tokenizer)
    with export_dir.publish(out_dir) as folder:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        _write_tokenizer(tokenizer, folder)
        if card:  # hf/model_card.py's
            with open(os.path.join(folder, "README.md"), "w") as f:
                f.write(card)


def _write_tokenizer(tokenizer: Any, folder: str) -> None:
    """An mlm_jax Tokenizer saved, or the tokenizer files at a path copied, into `folder`."""
    if hasattr(tokenizer, "save"):
        tokenizer.save(folder)
        return
    source = os.path.expanduser(str(tokenizer))
    names = (
        [source] if os.path.isfile(source) else [os.path.join(source, n) for n in _TOKENIZER_FILES]
    )
    names = [f for f in names if os.path.exists(f)]
    if not names:
        raise ValueError(f"tokenizer={source!r}: no tokenizer.json or vocab.txt there to copy")
    for f in names:
        shutil.copyfile(f, os.path.join(folder, os.path.basename(f)))
