"""A sweep driver owns its runs: a run live under another driver is reported running, never
failed. (SIGTERM to a `--parallel` driver: tests/test_sweep.py, beside the run whose compiled
steps it reuses.)"""

import os

from mlm_jax.config.errors import ConfigError
from mlm_jax.sweep import execution, run_state
from mlm_jax.sweep.execution import run_sweep
from mlm_jax.training import workdir
from tests.configs import small_run_config
from tests.test_sweep import _fake_trainer, _read_csv


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
