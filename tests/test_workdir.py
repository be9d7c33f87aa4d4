"""A run owns its workdir: one run at a time, nobody else's files, checks before any write,
verified checkpoints with fallback, and no number logged for a metric over no predictions.

The resume cases copy the session's uninterrupted 20-step run (tests/conftest.py) and check
that the resumed run ends as that run did.
"""

import gzip
import json
import os
import shutil
import socket

import numpy as np
import pytest

from mlm_jax.config import defaults as config_defaults
from mlm_jax.config.errors import ConfigError
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.training import checkpoint, metrics, workdir
from mlm_jax.training.loop import window_means
from mlm_jax.training.resolve import resolve
from mlm_jax.training.run import train_and_evaluate
from tests.configs import resume_test_config, small_run_config


def _steps(workdir_path):
    return [
        {k: v for k, v in e.items() if k != "train/tokens_per_s"}
        for e in metrics.read_metrics(workdir_path)
    ]


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


def test_a_second_run_meets_one_line_naming_the_holder(data_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    with workdir.WorkdirLock(run_dir):  # as a run in another process would hold it
        with pytest.raises(ConfigError) as info:
            train_and_evaluate(small_run_config(data_dir, num_steps=10), run_dir)
    message = str(info.value)
    assert "\n" not in message and "is in use by a run on" in message
    assert socket.gethostname() in message and f"pid {os.getpid()}" in message
    assert sorted(os.listdir(run_dir)) == [workdir.LOCK_FILE]  # it wrote nothing


def test_a_bucket_lease_holds_until_it_lapses(bucket, monkeypatch):
    from mlm_jax import files

    lease = f"gs://bucket/run/{workdir.LOCK_FILE}"
    holder = {"host": "tpu-vm-3", "pid": 77, "started": 0}
    files.write_text(lease, json.dumps({**holder, "expires": 4e9}))  # renewed recently
    with pytest.raises(ValueError, match="in use by a run on tpu-vm-3, pid 77"):
        workdir.WorkdirLock("gs://bucket/run").__enter__()
    files.write_text(lease, json.dumps({**holder, "expires": 1.0}))  # its holder crashed
    with workdir.WorkdirLock("gs://bucket/run"):
        mine = json.loads(files.read_text(lease))
        assert mine["pid"] == os.getpid() and mine["expires"] > 4e8
    assert json.loads(files.read_text(lease))["expires"] == 0  # released


def test_a_workdir_of_someone_elses_files_is_refused_and_left_as_it_was(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("my own notes, not a config")
    (run_dir / "metrics.jsonl").write_text('{"accuracy": 0.9}\n')
    with pytest.raises(ConfigError, match=r"holds files this project did not write \(config"):
        train_and_evaluate(small_run_config(data_dir, num_steps=10), str(run_dir))
    assert (run_dir / "config.json").read_text() == "my own notes, not a config"
    assert sorted(os.listdir(run_dir)) == ["config.json", "metrics.jsonl"]


def test_a_line_that_is_not_an_event_is_kept_not_a_crash(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"note": "mine"}\n{"step": 9, "x": 1}\n')
    metrics.MetricsWriter(str(tmp_path), start_step=5).close()
    assert path.read_text().splitlines() == ['{"step": 1, "train/loss": 2.0}', '{"note": "mine"}']
    assert metrics.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]


@pytest.fixture
def copied_run(uninterrupted_run, tmp_path):
    """A copy of the uninterrupted run's workdir (checkpoints of steps 10 and 20)."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(uninterrupted_run, run_dir)
    return run_dir


def test_the_resume_check_reads_the_checkpoints_own_config(data_dir, copied_run):
    os.remove(os.path.join(copied_run, "config.json"))
    config = resume_test_config(data_dir)
    config.masking.ratio = 0.4
    config.train.learning_rate = 1e-2
    with pytest.raises(ConfigError, match=r"masking.ratio: 0.15 -> 0.4; train.learning_rate: 0"):
        train_and_evaluate(config, copied_run)
    assert not os.path.exists(os.path.join(copied_run, "config.json"))


def _largest_array_file(step_dir):
    found = []
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        found += [os.path.join(root, n) for n in names]
    return max(found, key=os.path.getsize)


def _flip_bytes(step_dir):
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(64)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def _wrong_fingerprint(step_dir):
    """The arrays read fine but are not what was saved (the fingerprint is the witness)."""
    path = os.path.join(step_dir, "fingerprint", "metadata")
    saved = json.loads(open(path).read())
    name = sorted(saved)[len(saved) // 2]
    saved[name] = [saved[name][0] ^ 1, saved[name][1]]
    open(path, "w").write(json.dumps(saved))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_flip_bytes, _truncate, _wrong_fingerprint])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_an_intact_one(
    data_dir, uninterrupted_run, copied_run, damage, caplog
):
    damage(os.path.join(copied_run, "checkpoints", "20"))
    with caplog.at_level("WARNING", logger="mlm_jax.training.checkpoint"):
        train_and_evaluate(resume_test_config(data_dir), copied_run)
    warned = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warned) == 1 and "checkpoint of step 20" in warned[0], warned
    assert os.path.isdir(os.path.join(copied_run, "checkpoints", "20.damaged"))  # kept, renamed
    assert _steps(copied_run) == _steps(uninterrupted_run)  # retrained 11..20 exactly
    resumed, _ = checkpoint.load_trained(copied_run)
    reference, _ = checkpoint.load_trained(uninterrupted_run)
    for a, b in zip(_leaves(resumed), _leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def _refused(config, run_dir, match):
    with pytest.raises(ConfigError, match=match) as info:
        train_and_evaluate(config, run_dir)
    assert "\n" not in str(info.value)
    assert not os.path.exists(run_dir)  # nothing written


def test_degenerate_data_and_masking_are_refused_before_anything_is_written(data_dir, tmp_path):
    config = small_run_config(data_dir)
    config.masking.ratio = 0.001  # round(0.001 x 62) = 0 tokens of a full row
    config.masking.min_predictions = 0  # (the default floor of 1 would still predict one)
    _refused(config, str(tmp_path / "a"), r"masking.ratio=0.001 selects round\(0.001 x 62\) = 0")

    lines = tmp_path / "lines.txt"  # 400 documents, of which 0.2% (one, or none) held out
    lines.write_text("\n".join(" ".join(f"w{(i * j) % 97}" for j in range(20)) for i in range(400)))
    config = small_run_config(str(tmp_path / "tfds"))
    config.data.dataset = f"text:{lines}"
    config.data.text_unit = "line"
    config.data.vocab_size = 128
    config.data.heldout_fraction = 0.002
    _refused(config, str(tmp_path / "b"), "held-out split|no document fell in the held-out")

    # One-word pad rows now get their one prediction (masking.min_predictions); held-out rows
    # with no eligible token at all are still refused, in one line.
    import types

    from mlm_jax.training.checks import check_eval_batches

    spec = types.SimpleNamespace(special_ids=(0, 1, 2, 3), never_mask_ids=(), ratio=0.15,
                                 min_predictions=1)  # fmt: skip
    run = types.SimpleNamespace(eval_masking=spec, train=types.SimpleNamespace(eval_batch_size=2))
    batch = {"tokens": np.array([[2, 3, 0], [2, 9, 3]]), "maskable": np.zeros((2, 3), bool)}
    with pytest.raises(ConfigError, match="no token the eval masking .* would select"):
        check_eval_batches(run, [batch])
    batch["maskable"][1, 1] = True  # one eligible token: its one prediction is enough
    check_eval_batches(run, [batch])


def test_a_metric_over_no_predictions_is_never_a_number():
    window = [
        {"loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "mask_ratio": 0.15, "predictions": 0.0},
        {"loss": 3.0, "accuracy": 0.5, "grad_norm": 1.0, "mask_ratio": 0.15, "predictions": 9.0},
    ]
    means = window_means(window, step=2)
    assert means["train/loss"] == 3.0 and means["train/accuracy"] == 0.5  # the scored step only
    assert means["train/grad_norm"] == 0.5
    assert "train/loss" not in window_means(window[:1], step=1)


def test_bad_files_are_one_line_naming_the_path(tmp_path, data_dir):
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0", "truncation": null, "model": {"type": "Word')
    with pytest.raises(ValueError, match=f"{broken}: not a readable tokenizer.json"):
        tokenizer_lib.load_tokenizer(str(broken))
    binary = tmp_path / "vocab.txt"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=f"{binary}: not a vocab.txt"):
        tokenizer_lib.load_tokenizer(str(binary))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{run_dir / 'config.json'}: not the JSON config"):
        checkpoint.saved_config(str(run_dir))
    not_gzip = tmp_path / "texts" / "corpus.txt.gz"
    not_gzip.parent.mkdir()
    not_gzip.write_bytes(b"plain text, not gzip\n" * 10)
    config = small_run_config(str(tmp_path / "tfds"))
    config.data.dataset = f"text:{not_gzip}"
    _refused(config, str(tmp_path / "d"), f"{not_gzip}: not a gzip file")
    with gzip.open(not_gzip, "wt") as f:  # the same file, gzipped: accepted
        f.write("fine text\n")
    resolve(config, num_devices=1)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.dropout_rate", 1.5, "config.model.dropout_rate=1.5: expected a float in [0, 1)"),
        ("train.b2", 1.0, "config.train.b2=1.0: expected a float in [0, 1)"),
        ("train.grad_clip", -1.0, "config.train.grad_clip=-1.0: expected a float >= 0"),
        ("data.seq_len", 4, "config.data.seq_len=4: expected an integer >= 8"),
        ("train.warmup_steps", 5000, "config.train.warmup_steps=5000: expected an integer in 0"),
    ],
)
def test_numeric_fields_have_ranges(key, value, message):
    config = config_defaults.base_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError) as info:
        resolve(config, num_devices=1)
    assert message in str(info.value)


def test_help_exits_0_on_every_command(capsys):
    # finetune defines the same absl flags as main (one process holds one set); it parses with
    # the same cli.absl_flags_parser, checked here through main and the sweep.
    from mlm_jax import cli, fill_mask, generate, main
    from mlm_jax.data.tokenizer import __main__ as tokenizer_cli
    from mlm_jax.hf import command as hf

    for run in (
        lambda: main._parse_flags(["mlm_jax.main", "--help"]),
        lambda: fill_mask.main(["--help"]),
        lambda: generate.main(["--help"]),
        lambda: hf.main(["--help"]),
        lambda: tokenizer_cli.main(["--help"]),
        lambda: cli.absl_flags_parser("A sweep.", "experiments.sweep")(["sweep.py", "-h"]),
    ):
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "--print_config" in printed and "mlm_jax/config/defaults.py" in printed


def test_print_config_shows_every_field_with_its_comment_and_the_plan(data_dir, uninterrupted_run):
    from mlm_jax.config import doc as config_doc
    from mlm_jax.config import keys
    from mlm_jax.training.run import check, plan

    config = resume_test_config(data_dir)  # the run's own data dir: its corpus is built
    described = config_doc.describe(config).splitlines()
    assert len(described) == len(keys.flatten(config))
    assert all("  # " in line for line in described)  # every field has its comment
    assert "data.vocab_size = 512  [default 8192]" in "\n".join(described)
    assert "nothing left to do" in plan(check(config, uninterrupted_run), uninterrupted_run)


def test_a_vocabulary_trained_on_this_runs_held_out_documents_is_named(data_dir, tmp_path, caplog):
    from mlm_jax.data import loader
    from mlm_jax.data.spec import DataSpec

    config = small_run_config(data_dir)
    trained = loader.train_tokenizer(DataSpec.from_config(config.data, heldout_fraction=0.02))
    trained.save(str(tmp_path / "vocab"))
    config.data.tokenizer = str(tmp_path / "vocab")
    with caplog.at_level("WARNING", logger="mlm_jax.data.loader"):
        loader.get_tokenizer(DataSpec.from_config(config.data))
    assert f"data.tokenizer={tmp_path / 'vocab'} was trained on python_docs holding out 0.02" in (
        caplog.text
    )
