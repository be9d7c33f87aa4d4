"""A trained checkpoint leaves through the CLIs a user runs and means the same in transformers:
`python -m mlm_jax.hf export` gives BertForMaskedLM logits equal to ours, and
`python -m mlm_jax.fill_mask --workdir` ranks the same top-5 as transformers' fill-mask pipeline."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax import fill_mask
from mlm_jax.training import pretrained
from mlm_jax.training.run import train_and_evaluate
from tests.configs import small_run_config

pytestmark = pytest.mark.slow  # end-to-end: every test here trains

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "Return the [MASK] of the list.",
    "The [MASK] statement raises an exception.",
    "If the file does not exist, [MASK] is raised.",
]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    train_and_evaluate(small_run_config(data_dir, num_steps=40), workdir)
    out_dir = str(tmp_path_factory.mktemp("exported") / "hf")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlm_jax.hf",
            "export",
            f"--workdir={workdir}",
            f"--out_dir={out_dir}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return workdir, out_dir


def test_exported_trained_checkpoint_gives_our_logits(trained):
    workdir, out_dir = trained
    loaded = pretrained.load(workdir)
    model_config, params, tokenizer = loaded.spec, loaded.params, loaded.tokenizer
    hf_model = transformers.BertForMaskedLM.from_pretrained(out_dir).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    from mlm_jax.models.bert import BertMLM

    for text in SENTENCES:
        ids = hf_tokenizer(text)["input_ids"]
        ours_ids, _ = fill_mask.encode_with_masks(text, tokenizer)
        assert list(np.asarray(ours_ids).ravel()) == ids
        positions = jnp.arange(len(ids))[None]
        ours = BertMLM(model_config).apply(
            {"params": params}, jnp.asarray([ids]), positions, deterministic=True
        )
        with torch.no_grad():
            theirs = hf_model(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(np.asarray(ours)[0], theirs[0], atol=1e-4)


def test_fill_mask_cli_ranks_like_the_transformers_pipeline(trained):
    workdir, out_dir = trained
    pipe = transformers.pipeline("fill-mask", model=out_dir, top_k=5, device="cpu")
    out = subprocess.run(  # one command, every sentence: each printed, then its fillers
        [sys.executable, "-m", "mlm_jax.fill_mask", f"--workdir={workdir}", *SENTENCES],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    blocks = out.split("\n")
    starts = [blocks.index(text) for text in SENTENCES]
    printed = ["\n".join(blocks[a:b]) for a, b in zip(starts, [*starts[1:], len(blocks)])]
    loaded = pretrained.load(workdir)
    for text, block in zip(SENTENCES, printed):
        theirs = [r["token_str"].replace(" ", "") for r in pipe(text)]
        for token in theirs:
            assert token in block, (text, theirs, block)
        mine = fill_mask.fill_mask(text, loaded.spec, loaded.params, loaded.tokenizer, top_k=5)[0]
        assert [t for t, _ in mine] == [r["token_str"] for r in pipe(text)]


def test_generate_from_the_run_and_from_its_export_gives_the_same_text(trained):
    """`python -m mlm_jax.generate --workdir=RUN` and `--hf_dir=` its export: one model, so at
    temperature 0 the same greedy unmasking, token for token; no [MASK] left."""
    workdir, out_dir = trained
    flags = ["--prompt=Return the", "--length=12", "--steps=6", "--remasking=low_confidence",
             "--temperature=0", "--num_samples=2"]  # fmt: skip
    outputs = []
    for source in (f"--workdir={workdir}", f"--hf_dir={out_dir}"):
        done = subprocess.run(
            [sys.executable, "-m", "mlm_jax.generate", source, *flags],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    lines = outputs[0].strip().splitlines()
    assert outputs[0] == outputs[1] and len(lines) == 2, outputs
    assert all(line.startswith("return the") and "[MASK]" not in line for line in lines), lines


def test_the_export_carries_a_hub_model_card_of_the_run(trained):
    from huggingface_hub import ModelCard

    from mlm_jax import checksums
    from mlm_jax.training import metrics

    workdir, out_dir = trained
    assert "README.md" in checksums.read_sums(out_dir)  # fingerprinted with the weights
    card = ModelCard.load(os.path.join(out_dir, "README.md"))
    last_eval = [e for e in metrics.read_metrics(workdir) if "eval/loss" in e][-1]
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["eval/loss"] == pytest.approx(last_eval["eval/loss"], abs=1e-6)
    assert "- `masking.ratio`: `0.15`" in card.text
    with open(os.path.join(workdir, "commands.txt")) as f:
        assert f.read().strip() in card.text
