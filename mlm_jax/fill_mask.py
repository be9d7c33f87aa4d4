"""Top-k fillers for each [MASK] in a sentence: the first thing to try with a trained model.

python -m mlm_jax.fill_mask --workdir=/tmp/mlm_tiny "The [MASK] sat on the mat."
python -m mlm_jax.fill_mask --hf_dir=path/to/bert --top_k=10 "Paris is the [MASK] of France."
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax import cli
from mlm_jax.models.registry import mlm_model
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import pretrained

MASK_TEXT = "[MASK]"


def encode_with_masks(text: str, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """([CLS] ids [SEP] as int32 [L], positions of the [MASK] tokens int32 [K]).

    The text is split on the literal [MASK] first, as Hugging Face tokenizers split on special
    tokens before normalising, so every tokenizer sees [MASK] the same way.
    """
    pieces = text.split(MASK_TEXT)
    if len(pieces) < 2:
        raise ValueError(f"text {text!r}: contains no {MASK_TEXT}")
    encoded = tokenizer.encode([p for p in pieces])
    ids = [tokenizer.cls_id]
    for i, (piece_ids, _) in enumerate(encoded):
        if i:
            ids.append(tokenizer.mask_id)
        ids.extend(piece_ids)
    ids.append(tokenizer.sep_id)
    ids = np.asarray(ids, np.int32)
    return ids, np.flatnonzero(ids == tokenizer.mask_id).astype(np.int32)


def fill_mask(text: str, model_config: ModelSpec, params, tokenizer, top_k: int = 5):
    """For each [MASK] in text, the top_k (token, probability) pairs, best first."""
    tokens_L, positions_K = encode_with_masks(text, tokenizer)
    params = params["params"] if set(params) == {"params"} else params
    logits_1xKxV = mlm_model(model_config).apply(
        {"params": params}, jnp.asarray(tokens_L[None]), jnp.asarray(positions_K[None])
    )
    probs_KxV = np.asarray(jax.nn.softmax(logits_1xKxV[0], axis=-1))
    results = []
    for probs_V in probs_KxV:
        best = np.argsort(-probs_V, kind="stable")[:top_k]
        results.append([(tokenizer.id_to_token(int(i)), float(probs_V[i])) for i in best])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlm_jax.fill_mask", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's workdir (latest checkpoint)")
    source.add_argument(
        "--hf_dir", help="a Hugging Face BERT or ModernBERT directory with an MLM head"
    )
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("texts", nargs="+", help=f"sentences with {MASK_TEXT} in them")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        no_mask = [text for text in args.texts if MASK_TEXT not in text]
        if no_mask:  # checked before the weights load
            raise ValueError(f"text {no_mask[0]!r}: contains no {MASK_TEXT}")
        model = pretrained.load_mlm(args.workdir, args.hf_dir)
    for text in args.texts:
        print(text)
        fillers_per_mask = fill_mask(text, model.spec, model.params, model.tokenizer, args.top_k)
        for k, fillers in enumerate(fillers_per_mask):
            print(f"  {MASK_TEXT} #{k + 1}: " + "  ".join(f"{t} {p:.3f}" for t, p in fillers))


if __name__ == "__main__":
    main(sys.argv[1:])
