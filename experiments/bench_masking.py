"""Masking cost next to the tiny model's forward pass, on one batch, as one JSON line.

    python experiments/bench_masking.py                      # 256 x 512, all strategies
    python experiments/bench_masking.py --batch_size=32 --runs=3

Times jit(mask_tokens) for each strategy and jit(BertMLM.apply) at configs/tiny.py (vocab
8192, deterministic) on the same synthetic batch: median wall time over --runs calls after
--warmup calls, each call blocked until ready. Masking should cost well under the forward.
"""

import argparse
import json
import os
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.config.files import load_config_file
from mlm_jax.masking import EVAL_STRATEGIES, MaskingSpec, mask_tokens

TINY_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"
)

VOCAB = 8192
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def synthetic_batch(batch_size, seq_len, seed=0):
    """Ordinary tokens, [CLS] first, a [SEP] every ~128 tokens and at the end, 75% word starts."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, (batch_size, seq_len)).astype(np.int32)
    tokens[:, 0] = CLS
    tokens[:, 127::128] = SEP
    tokens[:, -1] = SEP
    maskable = tokens >= 5
    word_starts = rng.random((batch_size, seq_len)) < 0.75
    document_ids = 1 + np.cumsum(tokens == SEP, axis=1) - (tokens == SEP)
    return tokens, maskable, word_starts, document_ids.astype(np.int32)


def median_ms(fn, runs, warmup):
    for i in range(warmup):
        jax.block_until_ready(fn(i))
    times = []
    for i in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(warmup + i))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _time_strategies(config, args, batch, vocab, result: dict):
    """The median ms of each strategy's masking of `batch`; returns the uniform masking."""
    tokens, maskable, word_starts, _ = batch
    base_key = jax.random.key(0)
    masked = None
    for strategy in EVAL_STRATEGIES:  # (pmi is whole_word on other starts)
        config.masking.strategy = strategy
        spec = MaskingSpec.from_config(
            config.masking, seq_len=args.seq_len, num_steps=config.train.num_steps
        ).with_vocab(vocab)
        masker = jax.jit(mask_tokens, static_argnames="spec")

        def call(i, spec=spec, masker=masker):
            key = jax.random.fold_in(base_key, i)
            return masker(
                key, tokens, maskable, word_starts, ratio=jnp.float32(args.ratio), spec=spec
            )

        result["mask_ms"][strategy] = round(median_ms(call, args.runs, args.warmup), 3)
        if strategy == "uniform":
            masked = call(0)
            result["max_predictions"] = spec.max_predictions
    return masked


def _time_forward(config, args, masked, document_ids, vocab) -> float:
    """The median ms of configs/tiny.py's deterministic MLM forward on the masked batch."""
    import flax.linen as nn

    from mlm_jax.models.registry import mlm_model
    from mlm_jax.models.spec import ModelSpec

    model = mlm_model(ModelSpec.from_config(config.model).with_vocab(vocab))
    variables = model.init(
        jax.random.key(1), masked.inputs, masked.positions, document_ids_BxL=document_ids
    )
    params = nn.meta.unbox(variables)

    @jax.jit
    def forward(params, inputs, positions):
        return model.apply(params, inputs, positions, document_ids_BxL=document_ids)

    call = lambda i: forward(params, masked.inputs, masked.positions)  # noqa: E731
    return round(median_ms(call, args.runs, args.warmup), 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    config = load_config_file(TINY_CONFIG)
    config.masking.ratio = config.masking.end_ratio = args.ratio  # K follows the ratio timed
    batch = tuple(map(jnp.asarray, synthetic_batch(args.batch_size, args.seq_len)))
    vocab = types.SimpleNamespace(
        vocab_size=VOCAB, pad_id=PAD, mask_id=MASK, special_ids=(PAD, UNK, CLS, SEP, MASK)
    )
    result = {
        "bench": "masking",
        "device": jax.devices()[0].device_kind,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ratio": args.ratio,
        "runs": args.runs,
        "mask_ms": {},
    }
    masked = _time_strategies(config, args, batch, vocab, result)
    result["forward_ms"] = _time_forward(config, args, masked, batch[3], vocab)
    result["model"] = "configs/tiny.py BertMLM forward, deterministic, vocab 8192"
    result["mask_over_forward"] = {
        s: round(ms / result["forward_ms"], 4) for s, ms in result["mask_ms"].items()
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
