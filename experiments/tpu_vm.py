"""Launch, watch and relaunch mlm_jax runs on a Cloud TPU VM slice by shelling out to `gcloud`.

One command brings a slice up and starts a run on every worker:

    python experiments/tpu_vm.py up --name=mlm --zone=us-central2-b --accelerator_type=v4-32 \
        --spot --watch -- python3 -m mlm_jax.main --config=configs/bert.py:base \
        --workdir=gs://BUCKET/run

Steps (the first argument; `up` does create, copy, install and run in order):
  create   describe the VM; create it if absent, delete and recreate it if PREEMPTED/TERMINATED,
           reuse it if READY.
  copy     `git archive HEAD` into a tarball (committed files only, so what runs is a commit),
           scp it to every worker and unpack it into ~/mlm_jax (replacing the old copy).
           Refused on a worker where a run this script started is still alive, as is `run`:
           `up` on a READY VM never replaces the code under a live run or starts a second one.
  install  make a Python 3.11 venv ~/mlm_jax_venv (the pins need >= 3.11; TPU VM images have
           3.10, so python3.11 comes from the deadsnakes PPA) and pip install requirements.txt and the package
           plus jax[tpu] at the jax version pinned there. `run` activates that venv, so the
           command may say `python` or `python3`.
  run      start the command given after `--` (or --command, a shell string, for pipelines and
           sweeps) on all workers at once, detached with nohup; each worker appends its output
           to its own ~/mlm_jax_logs/run.log.
  logs     tail ~/mlm_jax_logs/run.log on every worker (--follow to keep following).
  stop     send SIGTERM to the run on every worker (its whole process group): mlm_jax.main
           saves a checkpoint and exits, as after a preemption notice.
  delete   delete the VM.

Why the same command on every worker is right: on Cloud TPU, jax.distributed.initialize()
finds the coordinator, the process count and this process's id from the TPU metadata, so each
worker runs the identical command and JAX joins them into one multi-controller program.

--watch (with `up`) polls the VM state every --poll_seconds. After a preemption (state
PREEMPTED or TERMINATED, or the VM is gone) it deletes/recreates the VM, reinstalls and starts
the same command again; the run resumes from the last checkpoint in its workdir, so the workdir
must be on GCS (gs://...): a worker's local disk does not survive, and with several workers a
local path is not shared. A VM that passes through any other non-READY state (e.g. REPAIRING)
and comes back READY gets the command started again, since its processes are gone.

--dry_run (before `--`) prints every command, one per line, exactly as it would run it (local commands run
from the repository root) and runs nothing. The VM state it would read is taken from
--dry_run_state (default NOT_FOUND); with --watch it shows one poll and what follows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
REMOTE_CODE_DIR = "~/mlm_jax"
REMOTE_TARBALL = "mlm_jax_code.tar.gz"  # relative to the worker's home directory
REMOTE_LOG = "~/mlm_jax_logs/run.log"
REMOTE_PID = "~/mlm_jax_logs/run.pid"  # process (group) id of the run `run` started last
REMOTE_VENV = "~/mlm_jax_venv"
# The pinned jax/flax/numpy need Python >= 3.11; TPU VM images (Ubuntu 22.04) ship 3.10.
PYTHON = "python3.11"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
GONE_STATES = ("PREEMPTED", "TERMINATED")
STEPS = ("up", "create", "copy", "install", "run", "logs", "stop", "delete")
# Worker shell: true while the run this script started last is alive there.
_RUN_ALIVE = f'[ -f {REMOTE_PID} ] && kill -0 "$(cat {REMOTE_PID})" 2>/dev/null'
# Worker shell: exits 3 with one line if that run is alive, so nothing replaces or doubles it.
_REFUSE_IF_RUNNING = (
    f'if {_RUN_ALIVE}; then echo "$(hostname): a run started by tpu_vm.py is still going '
    f'(pid $(cat {REMOTE_PID})); stop it first (the stop step)" >&2; exit 3; fi'
)


@dataclasses.dataclass(frozen=True)
class Tpu:
    """Which TPU VM the gcloud commands address, and how to create it."""

    name: str
    zone: str
    project: str | None = None
    accelerator_type: str | None = None
    runtime_version: str = "tpu-ubuntu2204-base"
    spot: bool = False
    preemptible: bool = False


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class CommandFailed(RuntimeError):
    pass


# ---------------------------------------------------------------- pure command builders


def _tpu_vm(verb: str, tpu: Tpu, positionals: Sequence[str], *flags: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB ARGS --zone=Z [--project=P] FLAGS`."""
    project = [f"--project={tpu.project}"] if tpu.project else []
    return [
        *("gcloud", "compute", "tpus", "tpu-vm", verb),
        *positionals,
        f"--zone={tpu.zone}",
        *project,
        *flags,
    ]


def describe_command(tpu: Tpu) -> list[str]:
    return _tpu_vm("describe", tpu, [tpu.name], "--format=value(state)")


def create_command(tpu: Tpu) -> list[str]:
    if not tpu.accelerator_type:
        raise ValueError(
            f"--accelerator_type is required to create TPU VM {tpu.name!r} (e.g. v4-32)"
        )
    if tpu.spot and tpu.preemptible:
        raise ValueError("--spot and --preemptible: pick one (spot is the newer kind)")
    kind = ["--spot"] if tpu.spot else ["--preemptible"] if tpu.preemptible else []
    return _tpu_vm(
        "create",
        tpu,
        [tpu.name],
        f"--accelerator-type={tpu.accelerator_type}",
        f"--version={tpu.runtime_version}",
        *kind,
    )


def delete_command(tpu: Tpu) -> list[str]:
    return _tpu_vm("delete", tpu, [tpu.name], "--quiet")


def ssh_command(tpu: Tpu, remote: str, worker: str = "all") -> list[str]:
    """Run the shell string `remote` on the workers (all of them, in parallel, by default)."""
    return _tpu_vm("ssh", tpu, [tpu.name], f"--worker={worker}", "--command", remote)


def copy_commands(tpu: Tpu) -> list[list[str]]:
    """Ship the committed tree: archive HEAD, scp it to every worker, unpack it fresh."""
    local_tarball = f"/tmp/{tpu.name}_code.tar.gz"
    unpack = (
        f"{_REFUSE_IF_RUNNING} && rm -rf {REMOTE_CODE_DIR} && mkdir -p {REMOTE_CODE_DIR} && "
        f"tar -xzf ~/{REMOTE_TARBALL} -C {REMOTE_CODE_DIR}"
    )
    return [
        ["git", "archive", "--format=tar.gz", f"--output={local_tarball}", "HEAD"],
        _tpu_vm("scp", tpu, [local_tarball, f"{tpu.name}:{REMOTE_TARBALL}"], "--worker=all"),
        ssh_command(tpu, unpack),
    ]


def jax_version(requirements_text: str) -> str:
    """The version pinned by the `jax==X` line, so jax[tpu] matches what the tests ran with."""
    for line in requirements_text.splitlines():
        match = re.fullmatch(r"\s*jax\s*==\s*([^\s#;]+)\s*(#.*)?", line)
        if match:
            return match.group(1)
    raise ValueError("requirements.txt: expected a pinned `jax==X.Y.Z` line, found none")


def install_command(tpu: Tpu, jax_version_pin: str) -> list[str]:
    """A Python 3.11 venv (deadsnakes if the image lacks it), requirements.txt and jax[tpu]."""
    if not re.fullmatch(r"[\w.+!-]+", jax_version_pin):
        raise ValueError(f"jax version {jax_version_pin!r}: expected something like 0.10.2")
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
    get_python = (
        f"if ! command -v {PYTHON} >/dev/null; then "
        f"sudo add-apt-repository -y ppa:deadsnakes/ppa && "
        f"{apt} install -y {PYTHON} {PYTHON}-venv; fi"
    )
    pip = (
        f"{REMOTE_VENV}/bin/python -m pip install -r requirements.txt -e . "
        f'"jax[tpu]=={jax_version_pin}" -f {LIBTPU_RELEASES}'
    )
    remote = f"cd {REMOTE_CODE_DIR} && {get_python} && {PYTHON} -m venv {REMOTE_VENV} && {pip}"
    return ssh_command(tpu, remote)


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # a shell `NAME=value` prefix
DISTRIBUTED_ENV = "MLM_JAX_DISTRIBUTED"  # read by mlm_jax.main


def run_command(tpu: Tpu, run_argv: Sequence[str]) -> list[str]:
    """Start run_argv on every worker, detached so ssh returns at once.

    Only the braced command goes to the background (a bare `a && b &` would background the
    whole list in a subshell that keeps ssh's output open); nohup survives the hang-up, and
    setsid gives the run its own process group, whose id goes to REMOTE_PID for `stop`.
    """
    log_dir = REMOTE_LOG.rsplit("/", 1)[0]
    # `-- XLA_FLAGS=... python3 ...`: nohup would take the assignment for a command; env sets it.
    argv = list(run_argv)
    if argv and _ASSIGNMENT.match(argv[0]):
        argv = ["env", *argv]
    # Several workers (or an unknown slice): mlm_jax.main starts jax.distributed, which finds
    # the other hosts itself and runs the preemption service that stops them all at one step.
    if workers_hint(tpu.accelerator_type) != 1:
        argv = ["env", f"{DISTRIBUTED_ENV}=1", *argv[1 if argv[:1] == ["env"] else 0 :]]
    remote = (
        f"mkdir -p {log_dir} && {_REFUSE_IF_RUNNING} && cd {REMOTE_CODE_DIR} && "
        f". {REMOTE_VENV}/bin/activate && "
        f"{{ setsid nohup {shlex.join(argv)} >> {REMOTE_LOG} 2>&1 < /dev/null & "
        f"echo $! > {REMOTE_PID}; }}"
    )
    return ssh_command(tpu, remote)


def stop_command(tpu: Tpu) -> list[str]:
    """SIGTERM to the run's process group on every worker (a no-op where none is alive)."""
    remote = (
        f'if {_RUN_ALIVE}; then kill -TERM -- -"$(cat {REMOTE_PID})" && '
        f'echo "$(hostname): sent SIGTERM to the run (pid $(cat {REMOTE_PID}))"; '
        f'else echo "$(hostname): no run started by tpu_vm.py is going"; fi'
    )
    return ssh_command(tpu, remote)


def logs_command(tpu: Tpu, lines: int, follow: bool, worker: str = "all") -> list[str]:
    follow_flag = " -F" if follow else ""
    remote = f'tail -n {lines}{follow_flag} {REMOTE_LOG} | sed -u "s/^/$(hostname) /"'
    return ssh_command(tpu, remote, worker=worker)


def launch_commands(tpu: Tpu, jax_version_pin: str, run_argv: Sequence[str]) -> list[list[str]]:
    """Everything after the VM is READY: code, packages, the run."""
    return [
        *copy_commands(tpu),
        install_command(tpu, jax_version_pin),
        run_command(tpu, run_argv),
    ]


def vm_commands(action: str, tpu: Tpu) -> list[list[str]]:
    """The gcloud calls that make the VM READY for an action chosen by next_action."""
    return {
        "create": [create_command(tpu)],
        "recreate": [delete_command(tpu), create_command(tpu)],
        "launch": [],
    }[action]


# ---------------------------------------------------------------- pure decisions


def parse_state(result: Result) -> str:
    """describe's answer as a state; NOT_FOUND when the VM is gone, UNKNOWN when gcloud failed."""
    if result.returncode == 0:
        return result.stdout.strip() or "UNKNOWN"
    if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
        return "NOT_FOUND"
    return "UNKNOWN"  # network or auth trouble: never delete a VM on that


def next_action(state: str, launched: bool) -> tuple[str, bool]:
    """(action, launched afterwards unless the action runs) for one observed VM state.

    action: create (VM gone), recreate (preempted: delete first), launch (READY, command not
    running), wait. A VM seen in any other known state (REPAIRING, RESTARTING, ...) has lost
    its processes, so the command is started again once it is READY; UNKNOWN changes nothing.
    """
    if state == "NOT_FOUND":
        return "create", False
    if state in GONE_STATES:
        return "recreate", False
    if state == "READY":
        return ("wait" if launched else "launch"), launched
    return "wait", launched and state == "UNKNOWN"


def _workdir_values(run_argv: Sequence[str]) -> list[str]:
    """Values of flags named like --workdir / --workdir_root, also inside `bash -c STRING`."""
    if len(run_argv) == 3 and list(run_argv[:2]) == ["bash", "-c"]:
        try:
            run_argv = shlex.split(run_argv[2])
        except ValueError:
            return []
    values = []
    for i, token in enumerate(run_argv):
        flag, eq, value = token.partition("=")
        if flag.startswith("--") and "workdir" in flag:
            if eq:
                values.append(value)
            elif i + 1 < len(run_argv):
                values.append(run_argv[i + 1])
    return values


def workers_hint(accelerator_type: str | None) -> int | None:
    """1 if the slice fits one host, 2 meaning 'several', None if unknown.

    For every TPU generation a suffix above 8 (cores for v2-v5p, chips for v5e/v6e) needs
    more than one host.
    """
    if not accelerator_type:
        return None
    match = re.search(r"-(\d+)$", accelerator_type)
    if not match:
        return None
    return 1 if int(match.group(1)) <= 8 else 2


def workdir_warning(run_argv: Sequence[str], accelerator_type: str | None, watch: bool) -> str:
    """A warning when a workdir is local but must be shared or survive a preemption; else ''."""
    workers = workers_hint(accelerator_type)
    if not watch and workers == 1:
        return ""
    local = [v for v in _workdir_values(run_argv) if not v.startswith("gs://")]
    if not local:
        return ""
    why = "--watch relaunches on a fresh VM" if watch else "the slice may have several workers"
    return (
        f"WARNING: workdir {local[0]!r} is not on GCS but {why}; "
        "use gs://BUCKET/... so every worker shares it and checkpoints survive"
    )


# ---------------------------------------------------------------- the one runner


def make_runner(dry_run: bool, dry_run_state: str = "NOT_FOUND") -> Callable[..., Result]:
    """run(cmd, capture=False): print it (dry run) or execute it from the repo root."""

    def run(cmd: list[str], capture: bool = False) -> Result:
        if dry_run:
            print(shlex.join(cmd), flush=True)
            if not capture:
                return Result(0)
            if dry_run_state == "NOT_FOUND":
                return Result(1, "", "ERROR: NOT_FOUND (dry run)")
            return Result(0, dry_run_state + "\n")
        print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, text=True, capture_output=capture)
        except FileNotFoundError:
            raise CommandFailed(f"{cmd[0]!r} not found on PATH (install the Cloud SDK)") from None
        if not capture and proc.returncode != 0:
            raise CommandFailed(f"exit status {proc.returncode}: {shlex.join(cmd)}")
        return Result(proc.returncode, proc.stdout or "", proc.stderr or "")

    return run


# ---------------------------------------------------------------- steps


def _log(message: str) -> None:
    print(f"[tpu_vm] {message}", file=sys.stderr, flush=True)


def _warn_if_dirty() -> None:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO_ROOT,
        text=True,
        capture_output=True,
    )
    if status.stdout.strip():
        _log("WARNING: uncommitted changes are not copied (the VM gets `git archive HEAD`)")


def bring_up(tpu: Tpu, run, args, launch: Callable[[], None] | None) -> None:
    """Make the VM READY (creating or recreating it as needed), then launch if asked."""
    while True:
        described = run(describe_command(tpu), capture=True)
        state = parse_state(described)
        if state == "UNKNOWN":  # gcloud itself failed (auth, network, project): say why, stop
            raise CommandFailed(f"describe failed: {described.stderr.strip() or described.stdout}")
        action, _ = next_action(state, launched=False)
        if action != "wait":
            break
        if args.dry_run:
            _log(f"VM is {state}; would wait --poll_seconds and describe again")
            return
        _log(f"VM is {state}; waiting {args.poll_seconds}s")
        time.sleep(args.poll_seconds)
    _log(f"VM {tpu.name} is {state}: {action}")
    for cmd in vm_commands(action, tpu):
        run(cmd)
    if launch is not None:
        launch()


def watch(tpu: Tpu, run, args, launch: Callable[[], None]) -> None:
    """Poll the VM forever; recreate and relaunch it after each preemption."""
    launched = True
    while True:
        if not args.dry_run:
            time.sleep(args.poll_seconds)
        state = parse_state(run(describe_command(tpu), capture=True))
        action, launched = next_action(state, launched)
        if action != "wait":
            _log(f"VM {tpu.name} is {state}: {action} and relaunch")
            try:
                for cmd in vm_commands(action, tpu):
                    run(cmd)
                launch()
                launched = True
            except CommandFailed as e:  # e.g. no spot capacity: try again at the next poll
                _log(f"relaunch failed ({e}); retrying after the next poll")
        if args.dry_run:
            return


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Flags before `--`; the run command after it."""
    argv = list(argv)
    run_argv = argv[argv.index("--") + 1 :] if "--" in argv else []
    flags = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("step", choices=STEPS, help="what to do (see the module docstring)")
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    p.add_argument("--accelerator_type", default=None, help="e.g. v4-32; needed to create")
    p.add_argument("--runtime_version", default="tpu-ubuntu2204-base", help="TPU VM image")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
    kind.add_argument("--preemptible", action="store_true", help="create a preemptible TPU VM")
    p.add_argument("--command", default=None, help="run this shell string instead of after --")
    p.add_argument("--watch", action="store_true", help="up: relaunch after preemptions")
    p.add_argument("--poll_seconds", type=float, default=60.0, help="--watch polling period")
    p.add_argument("--lines", type=int, default=100, help="logs: lines to show per worker")
    p.add_argument("--follow", action="store_true", help="logs: keep following (tail -F)")
    p.add_argument("--worker", default="all", help="logs: which worker(s), e.g. 0")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--dry_run_state", default="NOT_FOUND", help="the VM state a dry run pretends to see"
    )
    args = p.parse_args(flags)
    if "--dry_run" in run_argv:  # almost surely meant for this script: refuse to go live
        p.error("--dry_run comes after `--`, so it belongs to the run command; put it before `--`")
    if args.command is not None and run_argv:
        p.error("give the run command either after -- or with --command, not both")
    if args.command is not None:
        run_argv = ["bash", "-c", args.command]
    if args.step in ("up", "run") and not run_argv:
        p.error(f"{args.step}: give the command to run after -- (or with --command)")
    if args.step in ("up", "create") and not args.accelerator_type:
        p.error(f"{args.step}: --accelerator_type is required (e.g. v4-32)")
    if args.watch and args.step != "up":
        p.error("--watch goes with the `up` step")
    return args, run_argv


def main(argv: Sequence[str]) -> int:
    args, run_argv = parse_args(argv)
    tpu = Tpu(
        name=args.name,
        zone=args.zone,
        project=args.project,
        accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version,
        spot=args.spot,
        preemptible=args.preemptible,
    )
    run = make_runner(args.dry_run, args.dry_run_state)
    warning = workdir_warning(run_argv, args.accelerator_type, args.watch)
    if warning:
        _log(warning)
    if args.step in ("up", "copy") and not args.dry_run:
        _warn_if_dirty()
    pin = jax_version((REPO_ROOT / "requirements.txt").read_text())

    def launch() -> None:
        for cmd in launch_commands(tpu, pin, run_argv):
            run(cmd)

    try:
        if args.step == "up":
            bring_up(tpu, run, args, launch)
            if args.watch:
                watch(tpu, run, args, launch)
        elif args.step == "create":
            bring_up(tpu, run, args, launch=None)
        elif args.step == "copy":
            for cmd in copy_commands(tpu):
                run(cmd)
        elif args.step == "install":
            run(install_command(tpu, pin))
        elif args.step == "run":
            run(run_command(tpu, run_argv))
        elif args.step == "logs":
            run(logs_command(tpu, args.lines, args.follow, args.worker))
        elif args.step == "stop":
            run(stop_command(tpu))
        elif args.step == "delete":
            run(delete_command(tpu))
    except CommandFailed as e:
        _log(f"failed: {e}")
        return 1
    except KeyboardInterrupt:
        _log("stopped (the VM and its run are left as they are)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
