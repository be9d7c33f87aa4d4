"""Variable-rate training wired into a run: the new keys' one-line errors before anything
compiles, K from the distribution's top end, and a tiny run's eval/nll_bound against log V and
against its own eval/loss."""

import math

import pytest

from mlm_jax.config import defaults
from mlm_jax.masking.core import derived_max_predictions
from mlm_jax.training import metrics
from mlm_jax.training.resolve import resolve
from mlm_jax.training.run import train_and_evaluate
from tests.configs import small_run_config


def resolved(**masking):
    config = defaults.base_config()
    config.masking.update(masking)
    return resolve(config, num_devices=1, local_devices=1, num_hosts=1)


@pytest.mark.parametrize(
    "masking, message",
    [
        ({"rate_distribution": "uniform:0.5,0.2"},
         "config.masking.rate_distribution='uniform:0.5,0.2': expected fixed, uniform:A,B"),
        ({"rate_distribution": "gamma:1,2"},
         "config.masking.rate_distribution='gamma:1,2': expected fixed, uniform:A,B"),
        ({"loss_weighting": "sum"},
         "config.masking.loss_weighting='sum': expected one of mean, elbo"),
        ({"loss_weighting": "elbo"},
         "config.masking.loss_weighting='elbo': expected masking.mask_prob=1, random_prob=0"),
        ({"loss_weighting": "elbo", "mask_prob": 1.0, "random_prob": 0.0,
          "corruption_ratio": 0.3},
         "config.masking.loss_weighting='elbo': expected masking.mask_prob=1, random_prob=0"),
        ({"rate_distribution": "uniform:0,1", "schedule": "linear"},
         "config.masking.schedule='linear': expected 'constant' with masking.rate_distribution"),
    ],
)  # fmt: skip
def test_bad_rate_keys_are_one_line_before_anything_is_built(masking, message):
    with pytest.raises(ValueError) as e:
        resolved(**masking)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bad_bound_rates_is_one_line():
    config = defaults.base_config()
    config.eval.nll_bound_rates = -1
    with pytest.raises(ValueError, match=r"^config.eval.nll_bound_rates=-1: expected an integer"):
        resolve(config, num_devices=1, local_devices=1, num_hosts=1)


@pytest.mark.parametrize(
    "distribution, top", [("uniform:0,0.5", 0.5), ("uniform:0.1,1", 1.0), ("beta:2,6", 1.0)]
)
def test_k_comes_from_the_distributions_top_end(distribution, top):
    run = resolved(rate_distribution=distribution, ratio=0.15)
    assert run.masking.max_predictions == derived_max_predictions(top, run.data.seq_len, "uniform")
    assert run.eval_masking.max_predictions == derived_max_predictions(0.15, 128, "uniform")


def test_mdlm_settings_resolve_and_keep_static_masking_and_strategies():
    run = resolved(rate_distribution="uniform:0,1", loss_weighting="elbo", mask_prob=1.0,
                   random_prob=0.0, static_epochs=2, strategy="whole_word")  # fmt: skip
    spec = run.masking
    assert (spec.rates.kind, spec.rates.a, spec.rates.b) == ("uniform", 0.0, 1.0)
    assert (spec.loss_weighting, spec.static_epochs, spec.strategy) == ("elbo", 2, "whole_word")


def _events(workdir, key):
    return {e["step"]: e[key] for e in metrics.read_metrics(workdir) if key in e}


@pytest.mark.slow
def test_a_tiny_mdlm_run_has_a_bound_below_log_v_and_above_its_eval_loss(data_dir, tmp_path):
    """60 steps at rates ~ U(0, 1) with the elbo. The bound is the expected cross-entropy over
    every masking rate from 1/n to 1, while eval/loss is the cross-entropy at 15%, where the
    model sees 85% of the row: a model that uses context does worse at higher rates, so the
    bound lies above eval/loss, equal only for a model that ignores context. The margin is the
    noise of the two estimates: eval/loss averages 576 cross-entropies (4 batches x 16 rows,
    0.15 of their tokens) whose spread after 60 steps is about 1.2 nats (measured once on this
    corpus), a standard error of 0.05 nats; the bound averages every token of the same rows
    (4 rates), a smaller one: 0.25 nats is 5 standard errors of eval/loss."""
    config = small_run_config(data_dir, num_steps=60)
    config.eval.every_steps = 60
    config.eval.num_batches, config.eval.batch_size = 4, 16
    config.eval.nll_bound_rates = 4  # (the default; the small run turns it off)
    config.masking.update(rate_distribution="uniform:0,1", loss_weighting="elbo",
                          mask_prob=1.0, random_prob=0.0)  # fmt: skip
    workdir = str(tmp_path / "run")
    final = train_and_evaluate(config, workdir)
    log_v = math.log(512)
    bounds = _events(workdir, "eval/nll_bound")
    assert sorted(bounds) == [0, 60]
    assert abs(bounds[0] - log_v) < 0.05  # a fresh model is near uniform (init std 0.02)
    assert final["eval/nll_bound"] < log_v - 0.5
    assert final["eval/nll_bound"] > final["eval/loss"] - 0.25
    assert "eval_own/loss" in final  # the run's own masking, at rates drawn per row
    # train/mask_ratio is the mean drawn rate of 8 rows x 5 steps per event: over the run's
    # 480 rates ~ U(0, 1) (sd 0.289) the mean is within 4.5 standard errors (0.06) of 0.5.
    rates = _events(workdir, "train/mask_ratio")
    assert abs(sum(rates.values()) / len(rates) - 0.5) < 0.06
