"""A modernbert run trained here leaves for transformers and chains into the next phase:
`python -m mlm_jax.hf export` opens as ModernBertForMaskedLM with its tokenizer and gives our
logits and fill-mask top-1; a second phase at a longer seq_len and the WSD schedule starts from
the run directory; a fine-tune with mean pooling takes it."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mlm_jax import fill_mask, finetune
from mlm_jax.models.registry import mlm_model
from mlm_jax.training import pretrained
from mlm_jax.training.run import train_and_evaluate
from tests.configs import small_run_config

pytestmark = pytest.mark.slow  # end-to-end: every test here trains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["Return the [MASK] of the list.", "If the file does not exist, [MASK] is raised."]


def modern_config(data_dir, **train):
    """small_run_config as a 3-layer ModernBERT: layer 1 local, +-8 tokens of 64, in blocks."""
    c = small_run_config(data_dir, num_steps=train.pop("num_steps", 20))
    c.model.update(arch="modernbert", num_layers=3, global_every=2, local_window=16)
    c.model.update(layer_norm_eps=1e-5, dropout_rate=0.0, attention_dropout_rate=0.0)
    c.model.max_position_embeddings = 256
    c.masking.ratio = c.masking.end_ratio = 0.3
    c.train.update(train)
    return c


def _eval_losses(workdir):
    events = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [e["eval/loss"] for e in events if "eval/loss" in e]


@pytest.fixture(scope="module")
def phase1(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("modern") / "phase1")
    train_and_evaluate(modern_config(data_dir), workdir)
    return workdir


def test_export_opens_as_modernbert_with_our_logits_and_fill_mask(phase1, tmp_path):
    out_dir = str(tmp_path / "hf")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlm_jax.hf",
            "export",
            f"--workdir={phase1}",
            f"--out_dir={out_dir}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(out_dir).eval()
    assert type(hf_model).__name__ == "ModernBertForMaskedLM"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    loaded = pretrained.load(phase1)
    model = mlm_model(loaded.spec)
    pipe = transformers.pipeline("fill-mask", model=out_dir, top_k=1, device="cpu")
    for text in SENTENCES:
        ids = hf_tokenizer(text)["input_ids"]
        assert list(fill_mask.encode_with_masks(text, loaded.tokenizer)[0]) == ids
        ours = model.apply(
            {"params": loaded.params}, jnp.asarray([ids]), jnp.arange(len(ids))[None]
        )
        with torch.no_grad():
            theirs = hf_model(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(np.asarray(ours)[0], theirs[0], atol=1e-4)
        mine = fill_mask.fill_mask(text, loaded.spec, loaded.params, loaded.tokenizer, top_k=1)
        assert mine[0][0][0] == pipe(text)[0]["token_str"].strip()


def test_second_phase_at_a_longer_length_starts_from_the_run_directory(phase1, data_dir, tmp_path):
    """seq_len 64 -> 128 with WSD: the first held-out loss is phase 1's trained level, not a
    random model's; a run of another shape is refused naming the key."""
    config = modern_config(
        data_dir, num_steps=6, warmup_steps=1, lr_schedule="wsd", decay_share=0.5
    )
    config.data.seq_len = 128
    config.model.init_from = phase1
    workdir = str(tmp_path / "phase2")
    train_and_evaluate(config, workdir)
    first, trained = _eval_losses(phase1)[0], _eval_losses(phase1)[-1]
    phase2_start = _eval_losses(workdir)[0]
    # (other rows at another length: not phase 1's loss, but far nearer it than a fresh model's)
    assert first - trained > 0.3 and phase2_start < (first + trained) / 2, (first, trained)
    config.model.local_window = 32
    with pytest.raises(ValueError, match="that run has model.local_window=16"):
        train_and_evaluate(config, str(tmp_path / "refused"))


def test_finetune_with_mean_pooling_takes_the_run(phase1, tmp_path):
    rows = [(["no", "yes"][i % 2], ["class type", "return value"][i % 2], "x") for i in range(16)]
    for name in ("train", "dev"):
        with open(tmp_path / f"{name}.tsv", "w") as f:
            f.writelines("\t".join(r) + "\n" for r in rows)
    task = f"tsv:{tmp_path / 'train.tsv'},{tmp_path / 'dev.tsv'}"
    result = finetune.finetune(
        phase1, task, str(tmp_path / "ft"), epochs=1, batch_size=8, max_len=16, pooling="mean"
    )
    assert 0.0 <= result["dev/accuracy"] <= 1.0 and np.isfinite(result["dev/loss"])
