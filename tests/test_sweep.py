"""mlm_jax.sweep and its command line experiments/sweep.py running a sweep: training, skipping
and resuming, failures, buckets, fine-tuning requests, SIGTERM. What it is asked for and the
bad inputs: tests/test_sweep_inputs.py; the report's statistics: tests/test_sweep_report.py."""

import csv
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import matplotlib.image
import pytest

from mlm_jax import files
from mlm_jax.sweep import execution, run_state
from mlm_jax.sweep import finetuning as sweep_finetuning
from mlm_jax.sweep.axes import apply_settings, format_value
from mlm_jax.sweep.execution import run_sweep
from mlm_jax.sweep.finetuning import make_plan
from mlm_jax.sweep.report import write_report
from mlm_jax.training import checkpoint
from mlm_jax.training.workdir import LOCK_FILE
from tests.configs import small_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def config_overrides(config) -> list[str]:
    """`--config.x=y` flags that turn configs/tiny.py into `config`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs", "tiny.py"))
    tiny_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_module)
    tiny = dict(_flat(tiny_module.get_config().to_dict()))
    wanted = dict(_flat(config.to_dict()))
    return [f"--config.{k}={format_value(v)}" for k, v in wanted.items() if tiny.get(k) != v]


def sweep_run_config(data_dir: str, num_steps: int):
    """The small run as the sweep tests train it. A constant learning rate keeps the train
    step one program whatever train.num_steps (a decay's length is compiled into it), so the
    SIGTERM test's runs load what the sweep test's compiled from the compilation cache."""
    config = small_run_config(data_dir, num_steps=num_steps)
    config.train.lr_schedule = "constant"
    return config


def _sweep_cli(*args, env_extra=None):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))  # one device each
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "sweep.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def _mtimes(directory: str) -> dict[str, float]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = os.stat(path).st_mtime_ns
    return out


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_trains_skips_finished_resumes_missing_and_reports(data_dir, tmp_path, caplog):
    """One point as a --parallel subprocess from the command line; then the sweep grown by a
    point, rerun and resumed in this process (the same run_sweep, without a driver's imports
    and a run's each time); then --report from the command line."""
    config = sweep_run_config(data_dir, num_steps=10)
    config.checkpoint.every_steps = config.eval.every_steps = 5
    config.eval.nll_bound_rates = 4  # the bound's column is checked below
    flags = ["--config=configs/tiny.py", *config_overrides(config)]
    workdir = str(tmp_path / "sweep")
    runs = {r: os.path.join(workdir, f"masking.ratio={r}") for r in ("0.15", "0.4")}
    first = _sweep_cli(*flags, f"--workdir={workdir}", "--sweep=masking.ratio=0.4", "--parallel=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.path.exists(os.path.join(runs["0.4"], "sweep.log"))  # ran as a subprocess

    def sweep() -> str:
        caplog.clear()
        with caplog.at_level("INFO", logger="mlm_jax"):
            run_sweep(config, workdir, ["masking.ratio=0.15,0.4"], base_args=flags)
        return caplog.text

    # A point added: the finished run is skipped, the new one trained.
    said = sweep()
    assert "1 of 2 runs to train" in said and said.count("skipping finished run") == 1
    for run in runs.values():
        assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int)[-1] == "10"

    # Rerunning a finished sweep trains nothing: no file of either run changes.
    before = {r: _mtimes(d) for r, d in runs.items()}
    said = sweep()
    assert "0 of 2 runs to train" in said
    assert said.count("skipping finished run") == 2
    for r, d in runs.items():
        assert _mtimes(d) == before[r], r

    # An interrupted run (its last checkpoint and marker gone) is the only one trained again.
    import shutil

    shutil.rmtree(os.path.join(runs["0.4"], "checkpoints", "10"))
    os.remove(os.path.join(runs["0.4"], run_state.DONE_MARKER))
    said = sweep()
    assert "1 of 2 runs to train" in said
    assert "resumed from the checkpoint of step 5" in said
    assert _mtimes(runs["0.15"]) == before["0.15"]
    assert os.path.isdir(os.path.join(runs["0.4"], "checkpoints", "10"))

    # --report regenerates everything from the workdirs alone.
    for name in os.listdir(workdir):
        if name.startswith("results.") or name.endswith(".png"):
            os.remove(os.path.join(workdir, name))
    report = _sweep_cli(f"--workdir={workdir}", "--report")
    assert report.returncode == 0, report.stderr[-3000:]
    rows = {row["masking.ratio"]: row for row in _read_csv(os.path.join(workdir, "results.csv"))}
    assert set(rows) == {"0.15", "0.4"}
    for row in rows.values():
        assert row["status"] == "done" and row["step"] == "10"
        for key in ("eval_loss", "eval_accuracy", "eval_nll_bound", "own_loss", "own_accuracy"):
            assert math.isfinite(float(row[key])), (key, row)
        assert int(row["tokens_seen"]) == 10 * 8 * 64  # steps x batch x seq_len
    # 0.15 trains at the eval masking, so both columns are the same numbers; 0.4 does not.
    assert rows["0.15"]["own_loss"] == rows["0.15"]["eval_loss"]
    events = [json.loads(x) for x in open(os.path.join(runs["0.4"], "metrics.jsonl"))]
    last_own = [e for e in events if "eval_own/loss" in e][-1]
    assert float(rows["0.4"]["own_loss"]) == pytest.approx(last_own["eval_own/loss"], rel=1e-5)
    markdown = open(os.path.join(workdir, "results.md")).read()
    assert "| 0.15 |" in markdown and "| 0.4 |" in markdown
    for png in ("metric_vs_masking.ratio.png", "eval_curves.png"):
        image = matplotlib.image.imread(os.path.join(workdir, png))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # a --parallel=2 sweep in a subprocess, stopped by SIGTERM mid-training
def test_sigterm_to_a_parallel_driver_stops_its_runs_which_save(data_dir, tmp_path):
    """A sweep driver owns its runs: SIGTERM stops them (each saves), then the driver. (After
    the test above, whose steps, the same programs, its runs load from the compilation cache.)"""
    sweep = tmp_path / "sweep"
    config = sweep_run_config(data_dir, num_steps=100000)
    config.checkpoint.every_steps = config.eval.every_steps = 100000
    config.log.every_steps = 1
    args = ["--config=configs/tiny.py", f"--workdir={sweep}", "--sweep=masking.ratio=0.15,0.4",
            *config_overrides(config), "--parallel=2"]  # fmt: skip
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    driver = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "experiments", "sweep.py"), *args],
        env=env, cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = [sweep / "masking.ratio=0.15", sweep / "masking.ratio=0.4"]
    deadline = time.time() + 400
    while not all((r / "metrics.jsonl").exists() for r in runs):  # both are stepping
        assert driver.poll() is None and time.time() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.5)
    pids = [json.loads((r / LOCK_FILE).read_text())["pid"] for r in runs]
    driver.send_signal(signal.SIGTERM)
    stderr = driver.communicate(timeout=300)[1]
    assert driver.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "sweep stopped by SIGTERM" in stderr
    assert not any(_alive(pid) for pid in pids)  # no orphan keeps training
    for run in runs:
        assert checkpoint.latest_step(str(run)) is not None  # each saved on its SIGTERM
        assert not (run / run_state.FAILED_MARKER).exists()


def _fake_trainer(fail_ratio):
    """Stands in for train_and_evaluate: writes what a finished run leaves, or raises."""

    def train(config, run_dir):  # (run_dir: a local folder or gs://)
        if float(config.masking.ratio) == fail_ratio:
            raise RuntimeError("boom: out of memory at step 3")
        last = checkpoint.checkpoint_dir(run_dir) / str(config.train.num_steps)
        last.mkdir(parents=True)
        (last / "commit_success.txt").write_text("")  # a complete checkpoint
        files.write_text(files.join(run_dir, "config.json"), config.to_json())
        loss = 5.0 + config.masking.ratio + 0.1 * config.seed  # known per-run numbers
        events = [
            json.dumps({"step": step, "eval/loss": loss, "eval/accuracy": 0.5}) + "\n"
            for step in (0, config.train.num_steps)
        ]
        files.write_text(files.join(run_dir, "metrics.jsonl"), "".join(events))

    return train


def test_failed_run_is_recorded_and_the_others_finish(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(execution, "_train_in_process", _fake_trainer(fail_ratio=0.3))
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    workdir = str(tmp_path / "sweep")
    with caplog.at_level("INFO", logger="mlm_jax.sweep"):
        run_sweep(config, workdir, ["masking.ratio=0.3,0.5", "seed=0,1,2"], base_args=[])
    # Progress over runs: each start numbered, each end counted with the failures so far.
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(" ")[0] for m in said if " training " in m] == [f"[{k}/6]" for k in range(1, 7)]
    ends = [m for m in said if m.startswith("[") and " done] " in m]
    assert len(ends) == 6 and ends[-1].startswith("[6/6 done]") and "(3 failed)" in ends[-1]
    assert "min to go" in ends[0] and "min to go" not in ends[-1]
    rows = _read_csv(os.path.join(workdir, "results.csv"))
    assert len(rows) == 6
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert {r["masking.ratio"] for r in by_status["failed"]} == {"0.3"}
    assert all("RuntimeError: boom" in r["reason"] for r in by_status["failed"])
    assert len(by_status["done"]) == 3
    # results.md: mean and sample standard deviation over the three seeds.
    losses = [5.5, 5.6, 5.7]
    line = [x for x in open(os.path.join(workdir, "results.md")) if x.startswith("| 0.5 |")][0]
    expected = f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
    assert expected in line, line
    assert "masking.ratio=0.3,seed=0: failed" in open(os.path.join(workdir, "results.md")).read()
    # Finished elsewhere since (e.g. its --launch=print command): done, whatever the old marker.
    finished_elsewhere = os.path.join(workdir, "masking.ratio=0.3,seed=0")
    _fake_trainer(fail_ratio=None)(
        apply_settings(config, {"masking.ratio": 0.3, "seed": 0}), finished_elsewhere
    )
    write_report(workdir)
    rows = {r["run"]: r for r in _read_csv(os.path.join(workdir, "results.csv"))}
    assert rows["masking.ratio=0.3,seed=0"]["status"] == "done"
    assert rows["masking.ratio=0.3,seed=1"]["status"] == "failed"


def test_a_sweep_in_a_bucket_trains_fine_tunes_reports_and_skips_what_is_done(
    bucket, tmp_path, monkeypatch
):
    from mlm_jax.finetuning import loop

    trained, fake = [], _fake_trainer(fail_ratio=0.5)

    def train(config, run_dir):
        trained.append(run_dir.rsplit("/", 1)[1])
        fake(config, run_dir)

    def fake_finetune(run_dir, task, out, **kwargs):
        files.write_text(files.join(out, "result.json"), json.dumps({"dev/accuracy": 0.75}))

    monkeypatch.setattr(execution, "_train_in_process", train)
    monkeypatch.setattr(loop, "finetune", fake_finetune)
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    workdir = "gs://bucket/sweep"
    plan = make_plan(["tsv:a/t/train.tsv,a/t/dev.tsv"])
    for _ in range(2):
        run_sweep(config, workdir, ["masking.ratio=0.3,0.5"], base_args=[], finetune=plan)
    # The finished run is skipped the second time; the failed one is tried again.
    assert trained == ["masking.ratio=0.3", "masking.ratio=0.5", "masking.ratio=0.5"]
    table = csv.DictReader(io.StringIO(files.read_text(f"{workdir}/results.csv")))
    rows = {r["masking.ratio"]: r for r in table}
    assert rows["0.3"]["status"] == "done" and rows["0.3"]["finetune_accuracy"] == "0.75"
    assert rows["0.3"]["finetune_accuracy/t"] == rows["0.3"]["finetune_accuracy/t/seed=0"] == "0.75"
    assert files.exists(f"{workdir}/masking.ratio=0.3/finetune/t/seed=0/sweep_request.json")
    assert rows["0.5"]["status"] == "failed" and "boom" in rows["0.5"]["reason"]
    assert "| 0.3 |" in files.read_text(f"{workdir}/results.md")
    for png in ("metric_vs_masking.ratio.png", "eval_curves.png"):
        data = io.BytesIO(bucket.cat_file(f"{workdir}/{png}"))
        assert matplotlib.image.imread(data, format="png").shape[0] > 100
    assert not os.path.exists("gs:")  # (the test runs in tmp_path)


def test_finetuning_is_redone_for_another_task_seed_or_checkpoint(tmp_path, monkeypatch):
    from mlm_jax.finetuning import loop

    calls = []

    def fake_finetune(run_dir, task, out, *, seed, **kwargs):
        calls.append((task, seed))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"dev/accuracy": 0.5 + 0.1 * len(calls)}, f)

    monkeypatch.setattr(loop, "finetune", fake_finetune)
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    run_dir = str(tmp_path / "run")
    _fake_trainer(fail_ratio=None)(config, run_dir)
    plan = sweep_finetuning.make_plan(["tsv:x/ab/a,b", "tsv:x/cd/c,d"], seeds=["0", "1"])
    for _ in range(2):  # the same requests again reuse every result
        sweep_finetuning.finetune_runs(str(tmp_path), ["run"], plan)
    assert calls == [
        ("tsv:x/ab/a,b", 0),
        ("tsv:x/ab/a,b", 1),
        ("tsv:x/cd/c,d", 0),
        ("tsv:x/cd/c,d", 1),
    ]
    assert _rounded(run_state.finetune_results(run_dir, 7)) == {
        "ab": {0: 0.6, 1: 0.7},
        "cd": {0: 0.8, 1: 0.9},
    }
    longer = small_run_config(str(tmp_path / "unused"), num_steps=9)
    _fake_trainer(fail_ratio=None)(longer, run_dir)  # trained further since: step 9
    assert run_state.finetune_results(run_dir, 9) == {}  # the report shows no stale result
    sweep_finetuning.finetune_one(run_dir, "tsv:x/cd/c,d", 1, plan)
    assert calls[-1] == ("tsv:x/cd/c,d", 1) and len(calls) == 5
    assert _rounded(run_state.finetune_results(run_dir, 9)) == {"cd": {1: 1.0}}


def _rounded(results: dict) -> dict:
    return {task: {s: round(v, 9) for s, v in by_seed.items()} for task, by_seed in results.items()}


def test_an_older_sweeps_single_finetune_result_still_reports(tmp_path):
    """Before several tasks and seeds, a sweep wrote RUN/finetune/result.json itself."""
    out = tmp_path / "run" / "finetune"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"dev/accuracy": 0.625}))
    request = {"task": "tsv:/data/order/train.tsv,/data/order/dev.tsv", "epochs": 3, "step": 7}
    (out / "sweep_request.json").write_text(json.dumps(request))
    assert run_state.finetune_results(str(tmp_path / "run"), 7) == {"order": {0: 0.625}}
    assert run_state.finetune_results(str(tmp_path / "run"), 8) == {}
