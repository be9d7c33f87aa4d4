"""The README's quickstart says what configs/tiny.py runs: a change of the config that would
change the quoted numbers fails here until the README is updated in the same commit.

The numbers themselves are the lead's to re-measure on a quiet machine at the final commit
(README says how far the last digits move across CPU models). What is checked against
references nobody here computed: the quoted perplexities are exp(loss), and the loss before
training is that of near-uniform predictions over the vocabulary, ln(V) (BERT's 0.02 init).
"""

import math
import os
import re

import pytest

from mlm_jax.config.files import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quickstart():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    command, log = re.findall(r"```\n(.*?)```", section, re.S)[:2]
    return section, command, log


def test_the_readme_quotes_the_config_the_quickstart_runs(quickstart):
    section, command, log = quickstart
    assert "python -m mlm_jax.main --config=configs/tiny.py --workdir=/tmp/mlm_tiny" in command
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    prose = " ".join(section.split())
    assert f"an {c.data.vocab_size:,}-token WordPiece" in prose
    assert f"a {c.model.num_layers}-layer, {c.model.hidden_size}-wide BERT" in prose
    assert (
        f"for {c.train.num_steps:,} steps of {c.train.batch_size} x {c.data.seq_len} tokens"
        in prose
    )
    assert f"evaluating every {c.eval.every_steps} steps" in prose
    assert c.data.dataset == "python_docs" and c.model.arch == "bert"
    for total in re.findall(r"step \d+/(\d+)", log):
        assert int(total) == c.train.num_steps
    eval_steps = [int(s) for s in re.findall(r"eval at step (\d+)", log)]
    assert eval_steps[0] == 0 and eval_steps[-1] == c.train.num_steps
    assert all(s % c.eval.every_steps == 0 for s in eval_steps)
    assert f"checkpoint: /tmp/mlm_tiny/checkpoints/{c.train.num_steps}" in log


def test_the_quoted_numbers_agree_with_references_of_their_own(quickstart):
    _, _, log = quickstart
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    evals = re.findall(
        r"eval at step (\d+): eval/masked_fraction ([\d.]+), eval/loss ([\d.]+), "
        r"eval/accuracy ([\d.]+), eval/perplexity ([\d.]+)",
        log,
    )
    assert len(evals) >= 2
    for _, fraction, loss, _, perplexity in evals:
        assert float(perplexity) == pytest.approx(math.exp(float(loss)), rel=1e-3)
        # round(0.15 n) of each row's n eligible tokens, n ~ 126: within 0.5/126 of 0.15
        assert abs(float(fraction) - c.eval.mask_ratio) < 0.5 / 120
    step0_loss = float(evals[0][2])
    assert abs(step0_loss - math.log(c.data.vocab_size)) < 0.1  # near uniform at init
    assert float(evals[-1][2]) < step0_loss


def test_the_quoted_likelihood_bound_starts_at_log_v_and_stays_above_the_eval_loss(quickstart):
    """eval/nll_bound averages the loss over every masking rate: at init it is ln(V) like the
    loss, and a model that uses context does worse at high rates than at 15% (the margin is
    the one test_variable_rate_run states from the cross-entropies' spread)."""
    _, _, log = quickstart
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    rows = re.findall(r"eval/loss ([\d.]+), .*eval/nll_bound ([\d.]+)", log)
    assert len(rows) >= 2
    assert abs(float(rows[0][1]) - math.log(c.data.vocab_size)) < 0.1
    for loss, bound in rows[1:]:
        assert float(bound) > float(loss) - 0.25
