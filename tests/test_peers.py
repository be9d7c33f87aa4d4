"""experiments/peers.py: both sides run the same model at the same shape, and the peer's masking
is the 80/10/10 rule at the configured rate (no timing is checked: the CPU is shared)."""

import math
import os
import subprocess
import sys

import pytest
import torch
from scipy import stats

from experiments import peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inside(count: int, n: int, p: float) -> bool:
    low, high = stats.binom.interval(1 - 1e-6, n, p)
    return low <= count <= high


def test_peer_masking_is_80_10_10_at_the_rate_on_maskable_tokens_only():
    tokens = torch.randint(5, 1000, (512, 128))
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, [0, -1]] = False
    inputs, labels = peers.torch_mask(
        tokens, maskable, 0.15, 1000, torch.Generator().manual_seed(1)
    )
    chosen = labels != -100
    assert not chosen[~maskable].any()
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    n = int(chosen.sum())
    assert _inside(n, int(maskable.sum()), 0.15)
    as_mask = int((inputs[chosen] == peers.MASK).sum())
    kept = int((inputs[chosen] == tokens[chosen]).sum())
    # a random id equals the token with probability 1/995: kept is 10 % plus that
    assert _inside(as_mask, n, 0.8)
    assert _inside(kept, n, 0.1 + 0.1 / 995)
    assert int((inputs >= 1000).sum()) == 0


@pytest.mark.parametrize(
    "shape, head",
    [
        ("bert_tiny", "sparse"),
        pytest.param("bert_tiny", "full", marks=pytest.mark.slow),
        ("modernbert_tiny", "sparse"),
    ],
)
def test_quick_row_runs_both_sides_on_the_same_model(shape, head):
    row = peers.run_row(shape, steps=1, repeats=1, bert_head=head, quick=True)
    vocab, padded, hidden = 300, 384, peers.QUICK["model.hidden_size"]
    # The same architecture: ours differs only by the padded vocabulary rows and their biases,
    # and in ModernBERT by layer 0's attention norm, unused (HF has none) but kept so that
    # every layer has the same parameters (a scanned stack needs that).
    extra = (padded - vocab) * (hidden + 1) + (hidden if shape.startswith("modern") else 0)
    assert row["parameters"]["ours"] - row["parameters"]["peer"] == extra
    for side in ("ours", "peer"):  # freshly initialised: about uniform over the vocabulary
        assert abs(row["first_loss"][side] - math.log(vocab)) < 0.3, row["first_loss"]
    expected_head = "all positions" if head == "full" and shape == "bert_tiny" else "masked"
    assert row["peer_head"].startswith(expected_head)
    assert row["ratio_median"] > 0
    table = peers.markdown(peers.environment(), [row], ["--quick"])
    assert "`python experiments/peers.py --quick`" in table
    assert "transformers" in table and row["label"] in table


def test_unknown_shape_is_one_error_line():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "peers.py"), "--shape=bert_huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --shape=bert_huge")
