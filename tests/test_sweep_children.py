"""A sweep driver owns its runs: SIGTERM to `--parallel` stops them (each saves) and then the
driver; a run live under another driver is reported running, never failed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlm_jax.config.errors import ConfigError
from mlm_jax.sweep import execution, run_state
from mlm_jax.sweep.execution import run_sweep
from mlm_jax.training import checkpoint, workdir
from tests.configs import small_run_config
from tests.test_sweep import REPO, _fake_trainer, _read_csv, small_overrides


def rows_by_run(workdir_path):
    return {r["run"]: r for r in _read_csv(os.path.join(workdir_path, "results.csv"))}


def test_a_run_live_under_another_driver_is_left_to_it_and_reported_running(tmp_path, monkeypatch):
    trained = []
    fake = _fake_trainer(fail_ratio=None)
    monkeypatch.setattr(
        execution, "_train_in_process", lambda c, d: (trained.append(d), fake(c, d))
    )
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    sweep = tmp_path / "sweep"
    busy = str(sweep / "masking.ratio=0.3")
    with workdir.WorkdirLock(busy):  # what the other driver's run holds
        rows = run_sweep(config, str(sweep), ["masking.ratio=0.3,0.5"], base_args=[])
    assert trained == [str(sweep / "masking.ratio=0.5")]
    statuses = {r["run"]: r["status"] for r in rows}
    assert statuses == {"masking.ratio=0.3": "running", "masking.ratio=0.5": "done"}
    assert not os.path.exists(os.path.join(busy, run_state.FAILED_MARKER))


def test_a_run_taken_by_another_driver_meanwhile_is_not_marked_failed(tmp_path, monkeypatch):
    """The other driver takes the run between this one's look and its start: the run's own
    refusal (workdir in use) is not this run's failure."""
    held = []

    def taken_meanwhile(config, run_dir):
        lock = workdir.WorkdirLock(run_dir)
        lock.__enter__()
        held.append(lock)
        raise ConfigError(f"workdir {run_dir!r} is in use by a run on somewhere")

    monkeypatch.setattr(execution, "_train_in_process", taken_meanwhile)
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    rows = run_sweep(config, str(tmp_path / "sweep"), ["masking.ratio=0.3"], base_args=[])
    assert rows[0]["status"] == "running"
    assert not os.path.exists(tmp_path / "sweep" / "masking.ratio=0.3" / run_state.FAILED_MARKER)
    held[0].__exit__(None, None, None)
    assert rows_by_run(tmp_path / "sweep")["masking.ratio=0.3"]["status"] == "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # a --parallel=2 sweep in a subprocess, stopped by SIGTERM mid-training
def test_sigterm_to_a_parallel_driver_stops_its_runs_which_save(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--config=configs/tiny.py", f"--workdir={sweep}", "--sweep=masking.ratio=0.15,0.4",
            *small_overrides(data_dir, num_steps=100000), "--config.checkpoint.every_steps=100000",
            "--config.eval.every_steps=100000", "--config.log.every_steps=1", "--parallel=2"]  # fmt: skip
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
    pids = [json.loads((r / workdir.LOCK_FILE).read_text())["pid"] for r in runs]
    driver.send_signal(signal.SIGTERM)
    stderr = driver.communicate(timeout=300)[1]
    assert driver.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "sweep stopped by SIGTERM" in stderr
    assert not any(_alive(pid) for pid in pids)  # no orphan keeps training
    for run in runs:
        assert checkpoint.latest_step(str(run)) is not None  # each saved on its SIGTERM
        assert not (run / run_state.FAILED_MARKER).exists()
