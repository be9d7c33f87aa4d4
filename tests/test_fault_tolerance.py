"""Faults end in a resumable run that loses nothing: kill -9, SIGTERM, a half-written
checkpoint, NaN/Inf, and a workdir or disk that cannot take a checkpoint.

Every run is `python -m mlm_jax.main`-equivalent in a subprocess (RUNNER below: main's flags,
plus test hooks that act when the loop draws a given batch). The oracle for a resumed run is
the same config run without interruption: per-step losses and final parameters must be
bit-identical on CPU.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mlm_jax.training import checkpoint, metrics

pytestmark = pytest.mark.slow  # end-to-end: every test here trains

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 20
CKPT_EVERY = 10

# Runs mlm_jax.main with hooks from $MLM_TEST_HOOKS (JSON) on the train iterator. Batch i is
# drawn right after step i-1 is dispatched, so a hook at batch i acts during step i.
RUNNER = textwrap.dedent(
    """
    import errno, json, os, signal, sys, time

    hooks = json.loads(os.environ.get("MLM_TEST_HOOKS", "{}"))
    sys.argv[0] = "mlm_jax.main"
    from absl import app
    from mlm_jax import main
    from mlm_jax.data import loader


    def fail_all_saves():
        import orbax.checkpoint as ocp

        async def no_space(self, directory, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

        ocp.StandardCheckpointHandler.async_save = no_space


    class Hooked:
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            return self

        def get_state(self):
            return self.inner.get_state()

        def set_state(self, state):
            self.inner.set_state(state)

        def __next__(self):
            index = self.inner.get_state()["next_batch"]
            batch = dict(next(self.inner))
            if "record" in hooks:
                import jax

                with open(f"{hooks['record']}.{jax.process_index()}", "a") as f:
                    ids = batch["example_ids"].tolist()
                    f.write(json.dumps({"batch": index, "example_ids": ids}) + "\\n")
            if index == hooks.get("poison_at"):  # ids past the vocabulary embed as NaN
                batch["tokens"] = batch["tokens"].copy()
                batch["tokens"][0, 1:] = 10**6
            if index == hooks.get("fail_saves_at"):
                fail_all_saves()
            if index == hooks.get("term_at"):
                os.kill(os.getpid(), signal.SIGTERM)
            if index == hooks.get("kill_at"):
                for _ in range(600):  # the first checkpoint complete (renamed), then kill
                    if os.path.isdir(hooks["kill_after"]):
                        break
                    time.sleep(0.1)
                os.kill(os.getpid(), signal.SIGKILL)
            return batch


    if "slow_final_wait" in hooks:  # a save that takes this long to finish (a big model's)
        from mlm_jax.training import checkpoint

        wait = checkpoint.wait_until_finished
        checkpoint.wait_until_finished = lambda *a: time.sleep(hooks["slow_final_wait"]) or wait(*a)

    make = loader.make_train_iterator
    loader.make_train_iterator = lambda *a, **k: Hooked(make(*a, **k))
    app.run(main.main)
    """
)


def write_config_file(directory, data_dir, num_steps=NUM_STEPS) -> str:
    """A config file for main's --config: tests/configs.py's small run. The file carries the
    text of tests/configs.py itself, so the child needs only the installed mlm_jax."""
    path = os.path.join(directory, "small_config.py")
    with open(os.path.join(REPO, "tests", "configs.py")) as f:
        small_configs = f.read()
    with open(path, "w") as f:
        f.write(
            small_configs + "\n\n"
            f"def get_config():\n    return small_run_config({data_dir!r}, num_steps={num_steps})\n"
        )
    return path


def run_main(config_file, workdir, *overrides, hooks=None, devices=1, extra_flags=(), wait=True):
    """Starts RUNNER (= mlm_jax.main) in a subprocess; returns CompletedProcess or Popen.

    The runs share the session's persistent compilation cache (conftest), else one next to the
    config file: a restart loads the executable an earlier run compiled instead of compiling.
    """
    here = os.path.dirname(config_file)
    runner = os.path.join(here, "runner.py")
    if not os.path.exists(runner):
        with open(runner, "w") as f:
            f.write(RUNNER)
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", os.path.join(here, "jax_cache")
        ),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        MLM_TEST_HOOKS=json.dumps(hooks or {}),
    )
    cmd = [sys.executable, runner, f"--config={config_file}", f"--workdir={workdir}"]
    cmd += [f"--config.{o}" for o in overrides] + list(extra_flags)
    if not wait:
        return subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def steps_of(workdir) -> list[dict]:
    """metrics.jsonl without the wall-clock field, which no two runs share."""
    return [
        {k: v for k, v in e.items() if k != "train/tokens_per_s"}
        for e in metrics.read_metrics(workdir)
    ]


def assert_same_params(workdir_a, workdir_b):
    params_a, _ = checkpoint.load_trained(workdir_a)
    params_b, _ = checkpoint.load_trained(workdir_b)
    flat_a = dict(_flatten(params_a))
    flat_b = dict(_flatten(params_b))
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield prefix + k, np.asarray(v)


BASE = ("log.every_steps=1", f"checkpoint.every_steps={CKPT_EVERY}")
NO_EVAL = ("eval.every_steps=0",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_dir):
    """Config file plus one uninterrupted reference run (the oracle of the resume tests)."""
    root = tmp_path_factory.mktemp("faults")
    config_file = write_config_file(str(root), data_dir)
    reference = str(root / "reference")
    done = run_main(config_file, reference, *BASE)
    assert done.returncode == 0, done.stdout + done.stderr
    # A run that goes right says what it does and nothing alarming: no TFDS download banner or
    # variant warnings for the built-in corpus (the first build is in this data dir or another).
    for noise in ("Downloading and preparing", "Variant folder", "Using custom data config"):
        assert noise not in done.stderr + done.stdout, noise
    for said in ("compiling the train and eval steps", "compiled in", "finished at step 20"):
        assert said in done.stderr, said
    assert "python -m mlm_jax.fill_mask --workdir=" in done.stderr  # what to run next
    again = run_main(config_file, reference, *BASE)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-2000:]
    return config_file, reference, root


@pytest.fixture(scope="module")
def killed_and_resumed(setup):
    """kill -9 at a random step after the first checkpoint; before the restart, the folder a
    kill during the save of the last step would leave (orbax's temporary name, never renamed)."""
    config_file, _, root = setup
    workdir = str(root / "killed")
    kill_at = random.randint(CKPT_EVERY + 2, NUM_STEPS - 2)
    hooks = {"kill_at": kill_at, "kill_after": f"{workdir}/checkpoints/{CKPT_EVERY}"}
    killed = run_main(config_file, workdir, *BASE, hooks=hooks)
    partial = os.path.join(workdir, "checkpoints", f"{NUM_STEPS}{checkpoint.TMP_SUFFIX}")
    os.makedirs(os.path.join(partial, "state"))
    with open(os.path.join(partial, "state", "manifest.ocdbt"), "wb") as f:
        f.write(b"\0" * 100)
    events_before = metrics.read_metrics(workdir)
    resumed = run_main(config_file, workdir, *BASE)
    return workdir, kill_at, killed, events_before, partial, resumed


def test_kill_9_after_a_checkpoint_then_resume_is_bit_exact(setup, killed_and_resumed):
    _, reference, _ = setup
    workdir, kill_at, killed, events_before, _, resumed = killed_and_resumed
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert max(e["step"] for e in events_before) > CKPT_EVERY  # steps past the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {CKPT_EVERY}" in resumed.stderr
    assert steps_of(workdir) == steps_of(reference), f"killed at batch {kill_at}"
    assert_same_params(workdir, reference)


MODERNBERT = (  # 3 layers, layer 1 a +-8 window over the 64-token rows, with dropout on
    "model.arch=modernbert",
    "model.num_layers=3",
    "model.global_every=2",
    "model.local_window=16",
)


def test_modernbert_kill_9_after_a_checkpoint_then_resume_is_bit_exact(setup):
    """The same harness for the other family: its dropout keys, its layer-indexed scan and
    the checkpointed data position resume to the uninterrupted run's losses and weights."""
    config_file, _, root = setup
    reference = str(root / "modernbert_reference")
    done = run_main(config_file, reference, *BASE, *MODERNBERT)
    assert done.returncode == 0, done.stderr[-2000:]
    workdir = str(root / "modernbert_killed")
    hooks = {"kill_at": CKPT_EVERY + 3, "kill_after": f"{workdir}/checkpoints/{CKPT_EVERY}"}
    killed = run_main(config_file, workdir, *BASE, *MODERNBERT, hooks=hooks)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_main(config_file, workdir, *BASE, *MODERNBERT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from the checkpoint of step {CKPT_EVERY}" in resumed.stderr
    assert steps_of(workdir) == steps_of(reference)
    assert_same_params(workdir, reference)


def test_half_written_checkpoint_is_ignored_and_reported(killed_and_resumed):
    workdir, _, _, _, partial, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr
    assert f"found unfinished checkpoint writes ['{os.path.basename(partial)}']" in resumed.stderr
    assert f"resuming from step {CKPT_EVERY}, the last complete checkpoint" in resumed.stderr
    assert not os.path.exists(partial)  # orbax cleaned it up
    assert checkpoint.latest_step(workdir) == NUM_STEPS


def test_sigterm_saves_current_step_exits_0_and_resumes(setup):
    config_file, reference, root = setup
    workdir = str(root / "preempted")
    # Batch 11 is drawn while step 11 runs, right after the save of step 10 started.
    stopped = run_main(config_file, workdir, *BASE, hooks={"term_at": CKPT_EVERY + 1})
    assert stopped.returncode == 0, stopped.stderr
    assert "SIGTERM received" in stopped.stderr
    assert checkpoint.latest_step(workdir) == CKPT_EVERY + 1
    assert max(e["step"] for e in metrics.read_metrics(workdir)) == CKPT_EVERY + 1

    resumed = run_main(config_file, workdir, *BASE)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {CKPT_EVERY + 1}" in resumed.stderr
    assert steps_of(workdir) == steps_of(reference)
    assert_same_params(workdir, reference)


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(setup):
    config_file, _, root = setup
    workdir = str(root / "nan_stop")
    poisoned = 13  # batch 13 feeds step 14
    done = run_main(config_file, workdir, *BASE, *NO_EVAL, hooks={"poison_at": poisoned})
    assert done.returncode == 1
    assert f"error: non-finite loss or gradient at step {poisoned + 1}" in done.stderr
    assert "Traceback" not in done.stderr
    assert checkpoint.latest_step(workdir) == CKPT_EVERY
    params, _ = checkpoint.load_trained(workdir)
    assert all(np.isfinite(v).all() for _, v in _flatten(params))
    assert max(e["step"] for e in metrics.read_metrics(workdir)) == poisoned


def test_nan_skip_policy_skips_the_update_and_counts_it(setup):
    config_file, _, root = setup
    workdir = str(root / "nan_skip")
    poisoned = 13
    overrides = (*BASE, *NO_EVAL, "train.nan_policy=skip")
    done = run_main(config_file, workdir, *overrides, hooks={"poison_at": poisoned})
    assert done.returncode == 0, done.stderr
    assert f"skipped 1 update(s) with a non-finite loss or gradient by step {poisoned + 1}" in (
        done.stderr
    )
    events = {e["step"]: e for e in metrics.read_metrics(workdir) if "train/loss" in e}
    assert events[poisoned + 1]["train/loss"] == "nan"
    assert events[poisoned]["train/skipped_updates"] == 0
    assert events[NUM_STEPS]["train/skipped_updates"] == 1
    assert all(np.isfinite(events[s]["train/loss"]) for s in events if s != poisoned + 1)
    params, _ = checkpoint.load_trained(workdir)
    assert all(np.isfinite(v).all() for _, v in _flatten(params))


def test_unwritable_workdir_fails_in_one_line_before_compiling(setup, tmp_path):
    config_file, _, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    done = run_main(config_file, str(blocker / "run"), *BASE)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: workdir '{blocker / 'run'}': cannot write to")
    )
    assert "Traceback" not in done.stderr
    assert "eval at step" not in done.stderr  # nothing compiled or ran


def test_failed_save_stops_the_run_at_once_naming_its_step(setup):
    config_file, _, root = setup
    workdir = str(root / "disk_full")
    # 30 steps, saves at 10, 20, 30; from batch 15 on every array write fails with ENOSPC (what
    # a full disk gives), so the save of step 20 fails while step 21 runs.
    done = run_main(
        config_file, workdir, *BASE, *NO_EVAL, "train.num_steps=30", hooks={"fail_saves_at": 15}
    )
    assert done.returncode == 1, done.stderr
    line = [s for s in done.stderr.splitlines() if s.startswith("error:")]
    assert len(line) == 1, done.stderr
    assert f"could not write the checkpoint of step {2 * CKPT_EVERY}" in line[0]
    assert os.path.join(workdir, "checkpoints") in line[0]
    assert "No space left on device" in line[0]
    assert f"the last complete checkpoint is step {CKPT_EVERY}" in line[0]
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    assert max(e["step"] for e in metrics.read_metrics(workdir)) <= 2 * CKPT_EVERY + 2
    assert checkpoint.latest_step(workdir) == CKPT_EVERY
    params, _ = checkpoint.load_trained(workdir)
    assert all(np.isfinite(v).all() for _, v in _flatten(params))


def test_sigterm_while_the_step_compiles_exits_0_within_seconds(setup):
    """A Spot VM gives ~30 s of notice; compiling a deep unrolled model takes longer here."""
    import signal
    import time

    config_file, _, root = setup
    workdir = str(root / "term_compiling")
    deep = ("model.num_layers=12", "model.scan_layers=False", "model.hidden_size=128")
    proc = run_main(config_file, workdir, *BASE, *deep, wait=False)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "compiling the train and eval steps" in line:
            break
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    waited = time.monotonic() - sent
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "nothing new to save" in output and "compiled in" not in output, output[-3000:]
    assert waited < 10, (waited, output[-2000:])
    assert checkpoint.latest_step(workdir) is None


def _interrupt_after(proc, line_part: str, then=None) -> str:
    """Sends SIGINT once a line holding `line_part` appears; `then(lines)` may send more."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line_part in line:
            proc.send_signal(signal.SIGINT)
            break
    if then is not None:
        then(proc, lines)
    rest, _ = proc.communicate(timeout=300)
    return "".join(lines) + rest


def test_ctrl_c_saves_the_current_step_and_exits_130(setup):
    """Researchers stop runs with Ctrl-C (once a KeyboardInterrupt traceback, steps lost)."""
    config_file, _, root = setup
    workdir = str(root / "interrupted")
    proc = run_main(config_file, workdir, *BASE, wait=False)
    output = _interrupt_after(proc, "step 3/20")
    assert proc.returncode == 130, output[-3000:]
    assert "Ctrl-C received: saving a checkpoint at the current step" in output, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    stopped_at = max(e["step"] for e in metrics.read_metrics(workdir))
    assert 3 <= stopped_at < NUM_STEPS
    # The steps since the last save are kept; resuming from a saved step is SIGTERM's path.
    assert checkpoint.latest_step(workdir) == stopped_at


def test_a_second_ctrl_c_stops_at_once_without_saving(setup):
    config_file, _, root = setup
    workdir = str(root / "aborted")
    # The first Ctrl-C's save then takes a minute to finish: the second must not wait for it.
    proc = run_main(config_file, workdir, *BASE, hooks={"slow_final_wait": 60}, wait=False)

    sent = []

    def second_ctrl_c(proc, lines):
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C received" in line:
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
                sent.append(time.monotonic())
                break

    output = _interrupt_after(proc, "step 3/20", then=second_ctrl_c)
    assert sent and time.monotonic() - sent[0] < 30, output[-3000:]
    assert proc.returncode == 130, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert "stopped by a second Ctrl-C, without saving" in last, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
