"""mlm_jax.generate and mlm_jax/generation: the samplers' arithmetic on made-up logits, and text
from tiny random BERT and ModernBERT models, in memory and from Hugging Face directories."""

import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.generation import samplers, text
from mlm_jax.models.registry import mlm_model
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK = 4  # the made-up logits' [MASK] id
V = 12


def test_commit_schedule_sums_to_the_masked_count_and_front_loads_the_rest():
    for masked in range(0, 40):
        for steps in range(1, 12):
            counts = samplers.commit_schedule(masked, steps)
            assert counts.sum() == masked and len(counts) == steps
            assert counts.max() - counts.min() <= 1 and (np.diff(counts) <= 0).all()
            assert (counts == masked // steps + 1).sum() == masked % steps
    np.testing.assert_array_equal(samplers.commit_schedule(10, 4), [3, 3, 2, 2])


def _favouring(token, strength=50.0):
    """Made-up logits_fn: every position prefers `token`; [MASK] is -inf as text.py makes it."""

    def logits_fn(params, tokens_BxL):
        base = jnp.zeros((*tokens_BxL.shape, V)).at[..., token].set(strength)
        return base.at[..., MASK].set(-jnp.inf)

    return logits_fn


FAVOUR_7 = _favouring(7)


@pytest.mark.parametrize("remasking", samplers.REMASKINGS)
def test_a_model_that_favours_one_token_fills_every_mask_with_it(remasking):
    tokens = np.array([[2, 9, 10, MASK, MASK, MASK, MASK, MASK, 3]] * 2, np.int32)
    out = samplers.sample(FAVOUR_7, None, tokens, MASK, steps=3, seed=0, remasking=remasking)
    want = np.where(tokens == MASK, 7, tokens)
    np.testing.assert_array_equal(out, want)


def test_ancestral_steps_leave_a_position_masked_with_probability_t():
    """From t to s each masked position is unmasked with probability (t-s)/t, so after step i it
    is still masked with probability t_i (the product telescopes). n = 200 x 64 independent
    positions: each fraction must lie within 5 binomial standard deviations of t_i."""
    logits_fn = _favouring(7, strength=0.0)  # uniform over the 11 writable tokens
    rows, length, steps = 200, 64, 4
    tokens = jnp.full((rows, length), MASK, jnp.int32)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(5), r))(jnp.arange(rows))
    times = samplers.time_grid(steps)
    n = rows * length
    for i in range(steps):
        tokens = samplers.ancestral_step(
            logits_fn(None, tokens), tokens, MASK, times[i], times[i + 1], keys, i
        )
        still = float(jnp.mean(tokens == MASK))
        p = times[i + 1]
        assert abs(still - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9, (i, still, p)
    written = np.asarray(tokens)[np.asarray(tokens) != MASK]
    assert set(written.tolist()) <= set(range(V)) - {MASK}
    # each writable token about equally often (chi-square-free: within 5 sd of n/11 each)
    counts = np.bincount(written, minlength=V)[[t for t in range(V) if t != MASK]]
    expect = len(written) / 11
    assert np.all(np.abs(counts - expect) <= 5 * np.sqrt(expect)), counts


def test_low_confidence_commits_the_scheduled_count_most_confident_first():
    """Position p prefers token p with a peak that grows with p, so the most confident masked
    positions are the rightmost: each step commits exactly counts[j] of them, right to left."""

    def logits_fn(params, tokens_BxL):
        length = tokens_BxL.shape[1]
        peak = jnp.arange(length, dtype=jnp.float32) / 2
        logits = (
            jnp.zeros((*tokens_BxL.shape, 16))
            .at[:, jnp.arange(length), jnp.arange(length)]
            .set(peak)
        )
        return logits.at[..., MASK].set(-jnp.inf)

    length, steps = 14, 4
    tokens = jnp.asarray(np.where(np.arange(length) >= 5, MASK, 1)[None], jnp.int32)
    keys = jax.random.key(0)[None]
    counts = samplers.commit_schedule(int((tokens == MASK).sum()), steps)  # 9 over 4: 3,2,2,2
    committed = 0
    for j in range(steps):
        tokens = samplers.confidence_step(
            logits_fn(None, tokens), tokens, MASK, counts[j], keys, j, temperature=0.0
        )
        committed += counts[j]
        filled = np.flatnonzero(np.asarray(tokens[0]) != MASK)
        assert list(filled) == [0, 1, 2, 3, 4, *range(length - committed, length)], (j, tokens)
    np.testing.assert_array_equal(tokens[0, 5:], np.arange(5, length))


# ----------------------------------------------------------------------------- tiny models


def _tokenizer(directory):
    words = [f"w{i}" for i in range(85)]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return load_tokenizer(path)


def _tiny(arch, tokenizer, vocab_size=100):
    """A random model whose vocabulary has 10 spare rows past the tokenizer's 90 and whose output
    bias pushes hard towards [MASK], [CLS] and a spare row: none of them may ever be written."""
    spec = ModelSpec(
        arch=arch,
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        vocab_size=vocab_size,
        max_position_embeddings=32,
        local_window=8,
        global_every=2,
        initializer_range=0.3,
        scan_layers=False,
    )
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(mlm_model(spec).init(jax.random.key(1), tokens, tokens))["params"]
    bias = np.zeros(spec.padded_vocab_size, np.float32)
    bias[[tokenizer.mask_id, tokenizer.cls_id, 95]] = 30.0
    params["mlm_head"]["output_bias"] = jnp.asarray(bias)
    return pretrained.Pretrained(spec, params, tokenizer, 32, has_mlm_head=True, where="")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tokenizer = _tokenizer(str(tmp_path_factory.mktemp("vocab")))
    return {arch: _tiny(arch, tokenizer) for arch in ("bert", "modernbert")}


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
@pytest.mark.parametrize("remasking", ["none", "low_confidence"])
def test_generate_is_deterministic_per_seed_and_writes_no_special_token(models, arch, remasking):
    model = models[arch]
    tokenizer = model.tokenizer

    def run(seed, num_samples=3):
        return text.generate(
            model, prompt="w3 w7", length=10, steps=4, seed=seed, remasking=remasking,
            num_samples=num_samples,
        )  # fmt: skip

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    np.testing.assert_array_equal(run(0, num_samples=1)[0], first[0])  # row k: its own draws
    assert (first[0] != first[1]).any()
    assert first.shape == (3, 1 + 2 + 10 + 1)
    np.testing.assert_array_equal(first[:, :3], [[tokenizer.cls_id, 8, 12]] * 3)  # w3 w7
    assert (first[:, -1] == tokenizer.sep_id).all()
    generated = first[:, 3:-1]
    assert not tokenizer.is_special_V[generated].any() and (generated < 90).all()


def test_a_prompt_too_long_for_the_model_is_one_line(models):
    with pytest.raises(ValueError, match=r"--length=29: the model's rows hold 32 tokens, the "
                       r"prompt takes 2 and \[CLS\], \[SEP\] two: expected --length <= 28"):  # fmt: skip
        text.generate(models["bert"], prompt="w1 w2", length=29, steps=2)
    with pytest.raises(ValueError, match=r"--steps=0: expected >= 1"):
        text.generate(models["bert"], length=3, steps=0)


def _generate_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "mlm_jax.generate", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_generate_from_hf_directories_of_both_families(models, tmp_path):
    """The command on exported BERT and ModernBERT directories: the same text as `generate` on
    the model in memory (same seed), again the same on a second call, no [MASK] left."""
    from mlm_jax.hf import directories as hf_dir

    for arch, model in models.items():
        # the export holds the tokenizer's 90 rows (HF configs name one vocabulary size)
        spec = dataclasses.replace(model.spec, vocab_size=90)
        params = jax.tree.map(np.asarray, model.params)
        out = str(tmp_path / arch)
        hf_dir.export_hf(params, spec, model.tokenizer, out)
        flags = [f"--hf_dir={out}", "--prompt=w5", "--length=6", "--steps=3", "--seed=4"]
        done = _generate_cli(*flags, "--num_samples=2")
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        loaded = pretrained.load(out)
        want = text.generate(loaded, prompt="w5", length=6, steps=3, seed=4, num_samples=2)
        assert lines == [model.tokenizer.decode(row) for row in want]
        assert len(lines) == 2 and all(line.startswith("w5 ") for line in lines)
        assert all("[MASK]" not in line and len(line.split()) == 7 for line in lines), lines
        if arch == "bert":
            again = _generate_cli(*flags, "--num_samples=2")
            assert again.stdout == done.stdout
    refused = _generate_cli(f"--hf_dir={tmp_path / 'bert'}", "--length=40")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: --length=40: the model's rows hold 32 tokens, the prompt takes 0 and [CLS], "
        "[SEP] two: expected --length <= 30"
    ]
