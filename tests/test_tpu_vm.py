"""experiments/tpu_vm.py: the exact gcloud commands, the shell they hand to the workers, and
the preemption/relaunch decisions. Nothing here talks to Google Cloud.

Expected commands are written out by hand from the gcloud reference
(`gcloud compute tpus tpu-vm create|describe|delete|scp|ssh`), not copied from the script.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "tpu_vm.py"

_spec = importlib.util.spec_from_file_location("tpu_vm", SCRIPT)
tpu_vm = importlib.util.module_from_spec(_spec)
sys.modules["tpu_vm"] = tpu_vm  # dataclasses look their module up there
_spec.loader.exec_module(tpu_vm)

RUN = "python3 -m mlm_jax.main --config=configs/bert.py:base --workdir=gs://BUCKET/run"
DESCRIBE = "gcloud compute tpus tpu-vm describe mlm --zone=us-central2-b '--format=value(state)'"
CREATE_SPOT = (
    "gcloud compute tpus tpu-vm create mlm --zone=us-central2-b --accelerator-type=v4-32 "
    "--version=tpu-ubuntu2204-base --spot"
)
DELETE = "gcloud compute tpus tpu-vm delete mlm --zone=us-central2-b --quiet"
ARCHIVE = "git archive --format=tar.gz --output=/tmp/mlm_code.tar.gz HEAD"
SCP = (
    "gcloud compute tpus tpu-vm scp /tmp/mlm_code.tar.gz mlm:mlm_jax_code.tar.gz "
    "--zone=us-central2-b --worker=all"
)
PID = "~/mlm_jax_logs/run.pid"
ALIVE = f'[ -f {PID} ] && kill -0 "$(cat {PID})" 2>/dev/null'
REFUSE = (  # a worker where the last run is still alive refuses copy and run
    f'if {ALIVE}; then echo "$(hostname): a run started by tpu_vm.py is still going '
    f'(pid $(cat {PID})); stop it first (the stop step)" >&2; exit 3; fi'
)
UNPACK = (
    "gcloud compute tpus tpu-vm ssh mlm --zone=us-central2-b --worker=all --command "
    + shlex.quote(
        f"{REFUSE} && rm -rf ~/mlm_jax && mkdir -p ~/mlm_jax && "
        "tar -xzf ~/mlm_jax_code.tar.gz -C ~/mlm_jax"
    )
)
LAUNCH_TAIL = "gcloud compute tpus tpu-vm ssh mlm --zone=us-central2-b --worker=all --command " + (
    shlex.quote(
        f"mkdir -p ~/mlm_jax_logs && {REFUSE} && cd ~/mlm_jax && "
        # v4-32 has 4 workers: the run starts jax.distributed (mlm_jax.main reads the variable)
        f". ~/mlm_jax_venv/bin/activate && {{ setsid nohup env MLM_JAX_DISTRIBUTED=1 {RUN} "
        ">> ~/mlm_jax_logs/run.log "
        f"2>&1 < /dev/null & echo $! > {PID}; }}"
    )
)
STOP = "gcloud compute tpus tpu-vm ssh mlm --zone=us-central2-b --worker=all --command " + (
    shlex.quote(
        f'if {ALIVE}; then kill -TERM -- -"$(cat {PID})" && '
        f'echo "$(hostname): sent SIGTERM to the run (pid $(cat {PID}))"; '
        'else echo "$(hostname): no run started by tpu_vm.py is going"; fi'
    )
)


def pinned_jax() -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.startswith("jax=="):
            return line.split("==")[1].strip()
    raise AssertionError("requirements.txt pins no jax")


def install_line() -> str:
    return (
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-central2-b --worker=all --command "
        "'cd ~/mlm_jax && if ! command -v python3.11 >/dev/null; then "
        "sudo add-apt-repository -y ppa:deadsnakes/ppa && "
        "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "
        "install -y python3.11 python3.11-venv; fi && "
        "python3.11 -m venv ~/mlm_jax_venv && "
        "~/mlm_jax_venv/bin/python -m pip install -r requirements.txt -e . "
        f'"jax[tpu]=={pinned_jax()}" '
        "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html'"
    )


def dry_run(*flags: str, run: str | None = RUN) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), *flags, "--dry_run"]
    if run is not None:
        argv += ["--", *shlex.split(run)]
    return subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=60)


UP = ("up", "--name=mlm", "--zone=us-central2-b", "--accelerator_type=v4-32", "--spot")


def test_up_creates_copies_installs_and_runs_on_all_workers():
    proc = dry_run(*UP)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        DESCRIBE,
        CREATE_SPOT,
        ARCHIVE,
        SCP,
        UNPACK,
        install_line(),
        LAUNCH_TAIL,
    ]
    assert "WARNING" not in proc.stderr  # the workdir is on GCS


def test_up_reuses_a_ready_vm():
    proc = dry_run(*UP, "--dry_run_state=READY")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [DESCRIBE, ARCHIVE, SCP, UNPACK, install_line(), LAUNCH_TAIL]


def test_up_replaces_a_preempted_vm_and_project_reaches_every_gcloud_call():
    proc = dry_run(*UP, "--dry_run_state=PREEMPTED", "--project=my-proj")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [shlex.split(line)[4] for line in lines[:3]] == ["describe", "delete", "create"]
    gcloud_lines = [line for line in lines if line.startswith("gcloud ")]
    assert len(gcloud_lines) == 7  # describe delete create scp unpack install run
    assert all("--project=my-proj" in shlex.split(line) for line in gcloud_lines)


def test_watch_dry_run_shows_the_relaunch_after_a_preemption():
    proc = dry_run(*UP, "--watch", "--dry_run_state=PREEMPTED")
    assert proc.returncode == 0, proc.stderr
    launch = [ARCHIVE, SCP, UNPACK, install_line(), LAUNCH_TAIL]
    once = [DESCRIBE, DELETE, CREATE_SPOT, *launch]
    assert proc.stdout.splitlines() == once + once


def test_preemptible_and_sweep_command_string():
    sweep = "python3 experiments/sweep.py --workdir_root=gs://B/sweep && echo 'all done'"
    proc = dry_run(
        "up",
        "--name=mlm",
        "--zone=us-central2-b",
        "--accelerator_type=v4-32",
        "--preemptible",
        "--command",
        sweep,
        run=None,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert shlex.split(lines[1])[-1] == "--preemptible"
    remote = shlex.split(lines[-1])[-1]
    # The string reaches the worker as one `bash -c` argument, quoted once more.
    assert f"nohup env MLM_JAX_DISTRIBUTED=1 bash -c {shlex.quote(sweep)} >> ~/mlm_jax_logs/run.log" in remote  # fmt: skip
    assert "WARNING" not in proc.stderr


def test_spot_and_preemptible_together_is_an_error():
    proc = dry_run(*UP, "--preemptible")
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr
    with pytest.raises(ValueError, match="--spot and --preemptible"):
        tpu_vm.create_command(
            tpu_vm.Tpu("t", "z", accelerator_type="v4-8", spot=True, preemptible=True)
        )


@pytest.mark.parametrize(
    "flags, warned",
    [
        (("--accelerator_type=v4-32",), True),  # 4 workers: a local dir is not shared
        (("--accelerator_type=v4-8",), False),  # one worker, no relaunch: fine
        (("--accelerator_type=v4-8", "--watch"), True),  # relaunch on a fresh disk
        (("--accelerator_type=v5litepod-16",), True),
    ],
)
def test_local_workdir_warning(flags, warned):
    proc = dry_run("up", "--name=mlm", "--zone=z", *flags, run="python3 x.py --workdir /tmp/run")
    assert proc.returncode == 0, proc.stderr
    assert ("WARNING: workdir '/tmp/run' is not on GCS" in proc.stderr) == warned


def test_logs_stop_and_delete():
    proc = dry_run("logs", "--name=mlm", "--zone=us-central2-b", "--lines=20", "--follow", run=None)
    assert proc.stdout.splitlines() == [
        "gcloud compute tpus tpu-vm ssh mlm --zone=us-central2-b --worker=all --command "
        "'tail -n 20 -F ~/mlm_jax_logs/run.log | sed -u \"s/^/$(hostname) /\"'"
    ]
    proc = dry_run("stop", "--name=mlm", "--zone=us-central2-b", run=None)
    assert proc.stdout.splitlines() == [STOP]
    proc = dry_run("delete", "--name=mlm", "--zone=us-central2-b", run=None)
    assert proc.stdout.splitlines() == [DELETE]


def test_missing_run_command_or_accelerator_is_a_usage_error():
    assert dry_run(*UP, run=None).returncode == 2
    late = [sys.executable, str(SCRIPT), *UP, "--", "python3", "x.py", "--dry_run"]
    proc = subprocess.run(late, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "put it before `--`" in proc.stderr
    proc = dry_run("up", "--name=mlm", "--zone=z")
    assert proc.returncode == 2 and "--accelerator_type is required" in proc.stderr


def test_jax_version_is_read_from_requirements():
    text = "flax==0.1\n# jax==9.9 in a comment does not count\njax==0.10.2  # pinned\n"
    assert tpu_vm.jax_version(text) == "0.10.2"
    assert tpu_vm.jax_version((REPO / "requirements.txt").read_text()) == pinned_jax()
    with pytest.raises(ValueError, match="jax=="):
        tpu_vm.jax_version("jaxlib==0.10.2\nflax==0.1\n")


# ---------------------------------------------------------------- the shell the workers get


def _remote(line: str) -> str:
    argv = shlex.split(line)
    assert argv[-2] == "--command"
    return argv[-1]


def test_every_worker_command_is_valid_shell():
    proc = dry_run(*UP, "--command", "python3 sweep.py --workdir=gs://b/s && echo 'done'", run=None)
    for line in proc.stdout.splitlines():
        if " ssh " in line:
            check = subprocess.run(["bash", "-n", "-c", _remote(line)], capture_output=True)
            assert check.returncode == 0, (line, check.stderr)


def test_worker_shell_unpacks_and_runs_detached_with_the_exact_argv(tmp_path):
    """Execute the --command strings with bash in a fake home: quoting must survive intact,
    the venv must be active, and the shell must return while the run goes on."""
    home = tmp_path / "home"
    home.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker.txt").write_text("code")
    with tarfile.open(home / "mlm_jax_code.tar.gz", "w:gz") as tar:
        tar.add(src / "marker.txt", arcname="marker.txt")
    (home / "mlm_jax_venv" / "bin").mkdir(parents=True)
    (home / "mlm_jax_venv" / "bin" / "activate").write_text("export FAKE_VENV=active\n")
    release = tmp_path / "release"

    probe = (  # one line, so the dry run prints one line per command
        "import json, os, pathlib, sys, time; "
        "print(json.dumps([os.getcwd(), os.environ.get('FAKE_VENV'), os.environ.get('FAKE_FLAG')]"
        " + sys.argv[1:]), flush=True); "
        f"released = lambda: pathlib.Path({str(release)!r}).exists(); "
        "[time.sleep(0.05) for _ in iter(released, True)]"
    )
    # A leading NAME=value sets the run's environment, as it would in a shell.
    run_argv = ["FAKE_FLAG=x y", sys.executable, "-c", probe, "--workdir=gs://b/r", "two words", "it's"]  # fmt: skip
    proc = dry_run(*UP, "--dry_run_state=READY", run=shlex.join(run_argv))
    lines = proc.stdout.splitlines()
    env = {**os.environ, "HOME": str(home)}
    subprocess.run(["bash", "-c", _remote(lines[3])], env=env, check=True)  # unpack
    assert (home / "mlm_jax" / "marker.txt").read_text() == "code"

    def worker(line, check=True):
        # Returns only if nothing still holds its output open: the run is detached.
        return subprocess.run(
            ["bash", "-c", _remote(line)],
            env=env,
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    stop = dry_run("stop", "--name=mlm", "--zone=us-central2-b", run=None).stdout.strip()
    try:
        worker(lines[-1])
        log = home / "mlm_jax_logs" / "run.log"
        for _ in range(1200):  # the run is detached: wait for it to write its line
            if log.exists() and log.read_text().endswith("\n"):
                break
            time.sleep(0.05)
        expected = [str(home / "mlm_jax"), "active", "x y", *run_argv[4:]]
        assert json.loads(log.read_text()) == expected

        # While it runs, a second `up` neither replaces its code nor starts another copy.
        for line in (lines[3], lines[-1]):
            again = worker(line, check=False)
            assert again.returncode == 3, again
            assert "a run started by tpu_vm.py is still going" in again.stderr
        assert (home / "mlm_jax" / "marker.txt").exists()
        assert len(log.read_text().splitlines()) == 1

        # `stop` ends it (SIGTERM to its process group), after which a run starts again.
        assert "sent SIGTERM" in worker(stop).stdout
        pid = int((home / "mlm_jax_logs" / "run.pid").read_text())
        for _ in range(200):
            if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"run {pid} still alive after stop")
        assert "no run started by tpu_vm.py is going" in worker(stop).stdout
        worker(lines[-1])
    finally:
        release.touch()


# ---------------------------------------------------------------- watch / relaunch decisions


def test_parse_state_from_fake_describe_results():
    R = tpu_vm.Result
    assert tpu_vm.parse_state(R(0, "READY\n")) == "READY"
    assert tpu_vm.parse_state(R(0, "PREEMPTED\n")) == "PREEMPTED"
    gone = "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'x' was not found"
    assert tpu_vm.parse_state(R(1, "", gone)) == "NOT_FOUND"
    assert tpu_vm.parse_state(R(1, "", "ERROR: There was a problem refreshing your token")) == (
        "UNKNOWN"
    )


@pytest.mark.parametrize(
    "state, launched, expected",
    [
        ("READY", True, ("wait", True)),
        ("READY", False, ("launch", False)),
        ("PREEMPTED", True, ("recreate", False)),
        ("TERMINATED", True, ("recreate", False)),
        ("NOT_FOUND", True, ("create", False)),
        ("UNKNOWN", True, ("wait", True)),  # gcloud hiccup: never delete, never relaunch
        ("REPAIRING", True, ("wait", False)),  # processes lost: relaunch once READY
        ("CREATING", False, ("wait", False)),
    ],
)
def test_next_action(state, launched, expected):
    assert tpu_vm.next_action(state, launched) == expected


def test_watch_loop_relaunches_after_each_preemption(monkeypatch):
    """Drive watch() with scripted describe answers and record what it would run."""
    gone = tpu_vm.Result(1, "", "NOT_FOUND: not found")
    answers = iter(
        [
            tpu_vm.Result(0, "READY\n"),
            tpu_vm.Result(1, "", "ERROR: network is unreachable"),
            tpu_vm.Result(0, "PREEMPTED\n"),
            tpu_vm.Result(0, "READY\n"),
            gone,  # create fails (no capacity) ...
            gone,  # ... and is tried again at the next poll
            tpu_vm.Result(0, "REPAIRING\n"),
            tpu_vm.Result(0, "READY\n"),
            tpu_vm.Result(0, "READY\n"),
        ]
    )
    calls, create_attempts = [], []

    class Done(Exception):
        pass

    def fake_run(cmd, capture=False):
        verb = cmd[4]
        if capture:
            try:
                return next(answers)
            except StopIteration:
                raise Done from None
        calls.append(verb)
        if verb == "create":
            create_attempts.append(1)
            if len(create_attempts) == 2:
                raise tpu_vm.CommandFailed("no capacity")
        return tpu_vm.Result(0)

    monkeypatch.setattr(tpu_vm.time, "sleep", lambda s: None)
    tpu = tpu_vm.Tpu("mlm", "z", accelerator_type="v4-32", spot=True)
    launches = []
    args = argparse.Namespace(dry_run=False, poll_seconds=0)
    with pytest.raises(Done):
        tpu_vm.watch(tpu, fake_run, args, launch=lambda: launches.append(len(calls)))
    assert calls == ["delete", "create", "create", "create"]
    # launch after the recreate, after the retried create, and after REPAIRING -> READY
    assert launches == [2, 4, 4]


def test_readme_dry_run_block_matches_the_script():
    """README's Cloud TPU VMs section: its first `tpu_vm.py up` command, run with --dry_run,
    prints exactly the fenced block that follows it."""
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if "## Cloud TPU VMs" not in text:
        pytest.skip("README.md has no Cloud TPU VMs section yet")
    section = text.split("## Cloud TPU VMs", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^ +(python experiments/tpu_vm\.py up .*?)\n\n", section, re.M | re.S)
    assert command, "no `python experiments/tpu_vm.py up ...` command in the section"
    argv = shlex.split(command.group(1).replace("\\\n", " "))
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "no fenced dry-run block in the section"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), argv[2], "--dry_run", *argv[3:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == block.group(1)


def test_bring_up_stops_on_a_failed_describe_and_waits_out_transitions(monkeypatch):
    monkeypatch.setattr(tpu_vm.time, "sleep", lambda s: None)
    tpu = tpu_vm.Tpu("mlm", "z", accelerator_type="v4-8")
    args = argparse.Namespace(dry_run=False, poll_seconds=0)

    def failing(cmd, capture=False):
        return tpu_vm.Result(1, "", "ERROR: (gcloud) You do not currently have an active account")

    with pytest.raises(tpu_vm.CommandFailed, match="active account"):
        tpu_vm.bring_up(tpu, failing, args, launch=None)

    answers = iter([tpu_vm.Result(0, "CREATING\n"), tpu_vm.Result(0, "READY\n")])
    ran = []

    def creating_then_ready(cmd, capture=False):
        return next(answers) if capture else ran.append(cmd)

    tpu_vm.bring_up(tpu, creating_then_ready, args, launch=lambda: ran.append("launch"))
    assert ran == ["launch"]  # reused once READY: nothing created or deleted
