"""A trained model from a directory: a run of this project or a Hugging Face checkpoint.

fill_mask, fine-tuning, export and `model.init_from` all start from one of the two; this module
is the one place that tells them apart and turns either into (ModelSpec, parameters, tokenizer):

    model = load(path)                        # run dir (checkpoints/) or HF BERT dir
    params = fit(model, template)             # into another model's tree (classifier, trainer)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mlm_jax import checksums, files
from mlm_jax.config.defaults import can_change
from mlm_jax.config.keys import BETWEEN_PHASES
from mlm_jax.data.tokenizer import Tokenizer, load_tokenizer
from mlm_jax.hf import directories as hf_dir
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Pretrained:
    spec: ModelSpec
    params: dict  # numpy, the MLM model's tree (encoder, mlm_head; pooler from a HF checkpoint)
    tokenizer: Tokenizer | None  # None where load(..., tokenizer=None) was asked not to read it
    seq_len: int  # the length it was trained at (a HF checkpoint: min(128, its position table))
    has_mlm_head: bool  # False: mlm_head is freshly initialised (BertModel, sentence-transformers)
    where: str  # the directory, for messages


def is_run_dir(path: str) -> bool:
    """A run of this project (it has checkpoints/), local or gs://."""
    return checkpoint.checkpoint_dir(path).is_dir()


def load(
    path: str,
    *,
    tokenizer: str | None = "",
    spec: ModelSpec | None = None,
    weights: bool = True,
) -> Pretrained:
    """The model in `path`: a run directory's latest checkpoint or a Hugging Face directory.

    tokenizer: "" = the directory's own, a path = that one, None = none (init_from, whose run
    has its own). spec: convert a HF checkpoint into this layout (scan_layers, padded vocabulary)
    and check that its activation is this one, instead of deriving the spec from config.json.
    weights=False: the architecture and tokenizer only (params {}), nothing else read.
    """
    if not files.isdir(path):
        raise ValueError(
            f"{path!r}: not a directory (expected a run directory or a Hugging Face checkpoint)"
        )
    if is_run_dir(path):
        if weights:
            params, run_config = checkpoint.load_trained(path)
        else:
            params, run_config = {}, checkpoint.saved_config(path)
        tok = _tokenizer(tokenizer, files.join(path, "tokenizer"))
        model = ModelSpec.from_config(run_config.model)
        model = model.with_vocab(tok) if tok is not None else model
        return Pretrained(model, params, tok, int(run_config.data.seq_len), True, str(path))
    if weights:
        hf_config, tensors = hf_dir.read_checkpoint(path)
    else:
        hf_config, tensors = hf_dir.read_config(path), {}
    tok = _tokenizer(tokenizer, hf_dir.tokenizer_dir(path) if tokenizer == "" else "")
    hf_family = hf_dir.family(hf_config)
    if spec is None:
        # pad_id from the tokenizer, as for a run dir: the attention mask hides tokens == pad_id.
        pad_id = tok.pad_id if tok is not None else int(hf_config.get("pad_token_id") or 0)
        spec = ModelSpec(**hf_family.model_overrides(hf_config), pad_id=pad_id)
    else:
        hf_family.check_model(hf_config, path, spec)
    if tok is not None:
        spec = spec.with_vocab(tok)
    params = hf_family.hf_to_params(tensors, spec, where=str(path)) if weights else {}
    seq_len = min(128, spec.max_position_embeddings)
    return Pretrained(spec, params, tok, seq_len, hf_family.has_mlm_head(tensors), str(path))


def load_mlm(workdir: str | None = None, hf_dir: str | None = None) -> Pretrained:
    """The model behind `--workdir=RUN` or `--hf_dir=DIR` for a tool that reads its MLM head
    (fill_mask, generate): one ValueError line for a workdir without checkpoints or a HF
    checkpoint without a head (BertModel, sentence-transformers: a random head's output would
    look confident and mean nothing)."""
    if workdir:
        if not is_run_dir(workdir):
            raise ValueError(f"--workdir={workdir!r}: no checkpoints/ there")
        return load(workdir)
    model = load(hf_dir)
    if not model.has_mlm_head:
        raise ValueError(
            f"--hf_dir={hf_dir}: the checkpoint has no MLM head (cls.predictions.*), so its "
            "predictions would be random"
        )
    return model


def _tokenizer(asked: str | None, default: str) -> Tokenizer | None:
    if asked is None:
        return None
    return load_tokenizer(asked or default)


def check_init_from(path: str, spec: ModelSpec, tokenizer: Tokenizer | None = None) -> None:
    """What `model.init_from` can tell before anything compiles. A HF checkpoint: its
    architecture is the config's (weight shapes are checked at load). A run directory of this
    project (a phase before this one): the same model (every config.model key but those
    config/defaults.py lets change BETWEEN_PHASES) and, given `tokenizer`, the same vocabulary."""
    if not is_run_dir(path):
        hf_config = hf_dir.read_config(path)
        hf_dir.family(hf_config).check_model(hf_config, path, spec)
        checksums.verify_dir(hf_dir.checkpoint_folder(path))  # damaged bytes: before compiling
        return
    source = load(path, tokenizer=None, weights=False)
    ours = dataclasses.asdict(spec)
    for key, value in dataclasses.asdict(source.spec).items():
        if can_change(f"model.{key}", BETWEEN_PHASES) or key in ("vocab_size", "pad_id"):
            continue
        if ours[key] != value:
            raise ValueError(
                f"config.model.init_from={path!r}: that run has model.{key}={value!r}, this "
                f"config model.{key}={ours[key]!r}: set --config.model.{key}={value}"
            )
    if tokenizer is not None:
        theirs = load_tokenizer(files.join(path, "tokenizer"))
        if not theirs.same_vocabulary(tokenizer):
            raise ValueError(
                f"config.model.init_from={path!r}: that run's tokenizer differs from this "
                f"run's: set --config.data.tokenizer={files.join(path, 'tokenizer')}"
            )


def fit(model: Pretrained, template: Any) -> Any:
    """model.params shaped exactly like `template` (a params tree, boxed or not, arrays or
    eval_shape structs), as float32 numpy.

    What the template has and the checkpoint lacks keeps the template's values: a classifier,
    the pooler of a run (MLM pretraining trains none), the MLM head of a checkpoint without one
    (then with a zero output bias). What the checkpoint has and the template lacks is dropped
    (the MLM head when fine-tuning). A shape that disagrees is one ValueError naming it.
    """
    template = nn.unbox(template)
    wrapped = set(template) == {"params"}
    template = template["params"] if wrapped else template
    loaded = dict(model.params)
    if not model.has_mlm_head and "mlm_head" in template:
        head = _concrete_or(template["mlm_head"], loaded["mlm_head"])
        head["output_bias"] = np.zeros(model.spec.padded_vocab_size, np.float32)
        loaded["mlm_head"] = head
    result = {key: loaded.get(key, value) for key, value in template.items()}
    template_paths = dict(jax.tree_util.tree_flatten_with_path(template)[0])
    result_paths = dict(jax.tree_util.tree_flatten_with_path(result)[0])
    for path, leaf in template_paths.items():
        name = jax.tree_util.keystr(path)
        if path not in result_paths:
            raise ValueError(f"{model.where}: parameter {name} missing from the checkpoint")
        if tuple(np.shape(result_paths[path])) != tuple(leaf.shape):
            raise ValueError(
                f"{model.where}: parameter {name} has shape {tuple(np.shape(result_paths[path]))}, "
                f"the model expects {tuple(leaf.shape)}"
            )
    extra = sorted(jax.tree_util.keystr(p) for p in set(result_paths) - set(template_paths))
    if extra:
        raise ValueError(f"{model.where}: the checkpoint has parameters the model lacks: {extra}")
    result = jax.tree.map(lambda x: np.asarray(x, np.float32), result)
    return {"params": result} if wrapped else result


def _concrete_or(template_tree, fallback_tree):
    """The template's values when they are arrays (not eval_shape structs), else the fallback."""
    leaves = jax.tree.leaves(template_tree)
    if leaves and all(isinstance(x, (np.ndarray, jax.Array)) for x in leaves):
        return jax.tree.map(np.asarray, template_tree)
    return fallback_tree
