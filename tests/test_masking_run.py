"""Masking in real runs: the masked fraction a whole_word run logs, and a piecewise ratio
schedule that changes at its step and resumes across the change to the same losses."""

import numpy as np
import pytest

from mlm_jax.training import metrics
from mlm_jax.training.run import train_and_evaluate
from tests import interrupt
from tests.configs import resume_test_config, small_run_config

pytestmark = pytest.mark.slow  # every test here trains


def test_whole_word_run_logs_a_masked_fraction_of_the_ratio(data_dir, tmp_path):
    config = small_run_config(data_dir, num_steps=20)
    config.masking.strategy = "whole_word"
    config.train.batch_size = 64
    config.log.every_steps = 1
    config.eval.every_steps = 20
    config.checkpoint.every_steps = 20
    train_and_evaluate(config, str(tmp_path / "run"))
    events = metrics.read_metrics(str(tmp_path / "run"))
    windows = np.array([e["train/masked_fraction"] for e in events if "train/loss" in e])
    assert len(windows) == 20
    # Each window is one step of 64 rows; their spread gives the standard error.
    se = windows.std(ddof=1) / np.sqrt(len(windows))
    assert 4 * se <= 0.003, se
    assert abs(windows.mean() - 0.15) <= 4 * se, (windows.mean(), se)
    last_eval = [e for e in events if "eval/loss" in e][-1]
    # The common eval masking (uniform 0.15): round(0.15 n) of each row's n eligible tokens.
    assert abs(last_eval["eval/masked_fraction"] - 0.15) < 0.01


def test_piecewise_schedule_changes_at_its_step_and_resumes_across_it(
    data_dir, tmp_path, monkeypatch
):
    config = resume_test_config(data_dir)  # 20 steps, logs every 4, checkpoints 10 and 20
    config.masking.strategy = "whole_word"
    config.masking.ratio = 0.4
    config.masking.schedule = "piecewise"
    config.masking.piecewise = "12:0.15"  # steps 0-11 at 0.4, then 0.15
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    train_and_evaluate(config, full)

    resume = interrupt.stop_at_step(monkeypatch, 15)  # past the change, after checkpoint 10
    with pytest.raises(interrupt.Stop):
        train_and_evaluate(config, cut)
    resume()
    assert interrupt.wait_for_checkpoint(cut, 10) == 10
    train_and_evaluate(config, cut)

    def train_events(workdir):
        return [
            {k: v for k, v in e.items() if k != "train/tokens_per_s"}
            for e in metrics.read_metrics(workdir)
        ]

    events = train_events(full)
    assert train_events(cut) == events  # same losses, masks and evals, bit-exact on CPU
    train = [e for e in events if "train/loss" in e]
    # Event at step s averages steps s-4 .. s-1 (0-based): the change shows at event 16.
    np.testing.assert_allclose([e["train/mask_ratio"] for e in train], [0.4] * 3 + [0.15] * 2)
    fractions = [e["train/masked_fraction"] for e in train]
    assert min(fractions[:3]) > 0.35 and max(fractions[3:]) < 0.2, fractions
