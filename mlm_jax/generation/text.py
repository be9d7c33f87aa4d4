"""Text in, text out around the samplers: the canvas a model fills and the tokens it may write.

The canvas is `[CLS] prompt [MASK] x length [SEP]`, a row the model saw in pretraining (a
document between [CLS] and [SEP]); a [MASK] written in the prompt is filled too. The model may
write any token of the tokenizer but its special ones ([MASK], [CLS], [SEP], [PAD], [UNK] and
any other it marks special) and never a spare row of a vocabulary padded past the tokenizer's.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from mlm_jax.generation import samplers
from mlm_jax.models.registry import mlm_model


def check_arguments(length, steps, num_samples, temperature, remasking) -> None:
    """One ValueError line for a value no model could take (before any model loads)."""
    for name, value in (("length", length), ("steps", steps), ("num_samples", num_samples)):
        if value < 1:
            raise ValueError(f"--{name}={value}: expected >= 1")
    if not temperature >= 0:
        raise ValueError(f"--temperature={temperature}: expected >= 0 (0: the most likely token)")
    if remasking not in samplers.REMASKINGS:
        raise ValueError(f"--remasking={remasking!r}: expected one of {samplers.REMASKINGS}")


def canvas(tokenizer, prompt: str, length: int, max_length: int) -> np.ndarray:
    """int32 [L]: [CLS] prompt [MASK]*length [SEP]; one ValueError line past max_length."""
    prompt_ids = [int(i) for i in tokenizer.encode_arrays([prompt])[0][0]] if prompt else []
    room = max_length - len(prompt_ids) - 2
    if length > room:
        raise ValueError(
            f"--length={length}: the model's rows hold {max_length} tokens, the prompt takes "
            f"{len(prompt_ids)} and [CLS], [SEP] two: expected --length <= {room}"
        )
    ids = [tokenizer.cls_id, *prompt_ids, *[tokenizer.mask_id] * length, tokenizer.sep_id]
    return np.asarray(ids, np.int32)


def writable(tokenizer, vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: the tokens a sampler may write (not special, not a spare row)."""
    out = np.zeros(vocab_size, bool)
    out[: tokenizer.vocab_size] = ~tokenizer.is_special_V
    return out


@functools.lru_cache(maxsize=4)
def _logits_fn(spec):
    """(params, tokens_BxL) -> logits_BxLxV of every position, unwritable tokens at -inf. One
    function per spec, so repeated calls reuse the sampler's compilation."""
    model = mlm_model(spec)

    def logits(params_and_writable, tokens_BxL):
        params, writable_V = params_and_writable
        positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
        logits_BxLxV = model.apply({"params": params}, tokens_BxL, positions_BxL)
        return jnp.where(writable_V, logits_BxLxV, -jnp.inf)

    return logits


def generate(
    model,
    *,
    prompt: str = "",
    length: int,
    steps: int,
    seed: int = 0,
    remasking: str = "none",
    temperature: float = 1.0,
    num_samples: int = 1,
) -> np.ndarray:
    """int32 [num_samples, L]: the canvas of `prompt` and `length` masks, filled in `steps` steps
    (samplers.sample). model: a training.pretrained.Pretrained with weights and a tokenizer."""
    check_arguments(length, steps, num_samples, temperature, remasking)
    tokenizer, spec = model.tokenizer, model.spec
    row = canvas(tokenizer, prompt, length, spec.max_position_embeddings)
    params = model.params["params"] if set(model.params) == {"params"} else model.params
    allowed = jnp.asarray(writable(tokenizer, spec.vocab_size))
    return samplers.sample(
        _logits_fn(spec),
        (params, allowed),
        np.tile(row, (num_samples, 1)),
        tokenizer.mask_id,
        steps=steps,
        seed=seed,
        remasking=remasking,
        temperature=temperature,
    )
