"""Running a sweep's points: in this process, as --parallel subprocesses, printed for a launcher,
or submitted as SkyPilot managed jobs (--launch=sky), one per point, into one gs:// workdir.

run_sweep is the whole sweep: axes -> sweep.json -> the unfinished runs -> (fine-tuning) ->
the report. Where the runs go is one branch in it (`launch`); each way of running leaves the
same markers (run_state), so the report and a rerun cannot tell them apart.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from mlm_jax import cli, files
from mlm_jax.sweep import SweepError, children, precheck, report, run_state
from mlm_jax.sweep.axes import (
    apply_settings,
    check_names,
    expand,
    format_value,
    parse_axes,
    run_name,
)
from mlm_jax.sweep.baseline import parse_baseline
from mlm_jax.sweep.finetuning import FinetunePlan, finetune_runs
from mlm_jax.sweep.run_state import is_finished, one_line
from mlm_jax.training import workdir as workdir_lib

log = pylogging.getLogger("mlm_jax.sweep")


def config_args(argv: list[str]) -> list[str]:
    """The `--config...` flags of this command line, as `--name=value` (forwarded to each run)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name == "--config" or name.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv):
                arg = f"{arg}={argv[i + 1]}"
                i += 1
            out.append(arg)
        i += 1
    return out


def run_command(base_args: list[str], run_dir: str, settings: dict) -> list[str]:
    overrides = [f"--config.{k}={format_value(v)}" for k, v in settings.items()]
    return [sys.executable, "-m", "mlm_jax.main", *base_args, f"--workdir={run_dir}", *overrides]


def _train_in_process(config, run_dir: str) -> None:
    from mlm_jax.training import run as train

    train.train_and_evaluate(config, run_dir)


def _device_envs(parallel: int) -> list[dict]:
    """One environment per concurrent slot, each seeing its share of the devices."""
    env = dict(os.environ)
    gpus = _visible_gpus()
    if gpus:
        if parallel > len(gpus):
            raise SweepError(f"--parallel={parallel} exceeds the {len(gpus)} visible GPUs")
        per = len(gpus) // parallel
        return [
            {**env, "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per : (i + 1) * per])}
            for i in range(parallel)
        ]
    flags_text = env.get("XLA_FLAGS", "")
    found = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags_text)
    per = max(1, (int(found.group(1)) if found else 1) // parallel)
    rest = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags_text).strip()
    forced = f"{rest} --xla_force_host_platform_device_count={per}".strip()
    return [{**env, "XLA_FLAGS": forced} for _ in range(parallel)]


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def _prepare_data(configs: list) -> None:
    """Builds each distinct corpus, tokenizer and token cache once, before subprocesses start:
    runs starting together would otherwise race to build the same TFDS folder."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # parent: no GPU memory
    from mlm_jax.data import loader
    from mlm_jax.data.spec import DataSpec

    seen = set()
    for config in configs:
        key = json.dumps(config.data.to_dict(), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            data = DataSpec.from_config(config.data)
            tokenizer = loader.get_tokenizer(data)
            for split in ("train", "heldout"):
                loader.packed_rows(data, tokenizer, split)
        except Exception as e:  # noqa: BLE001 - the run itself reports it, once, in results.csv
            log.warning("could not prepare the data ahead of the runs: %s", one_line(e))


def _run_parallel(todo: list[tuple[str, dict]], base_args: list[str], parallel: int) -> None:
    envs = _device_envs(parallel)
    free, running = list(range(parallel)), {}
    queue = list(todo)
    progress = _Progress(len(todo), parallel)
    with children.owning() as stop:
        while queue or running:
            while queue and free and stop.signal is None:
                run_dir, settings = queue.pop(0)
                slot = free.pop(0)
                log_path = _local_log(run_dir)
                logfile = open(log_path, "a")  # noqa: SIM115
                command = run_command(base_args, run_dir, settings)
                start = progress.start(run_dir)
                log.info("  %s", " ".join(shlex.quote(c) for c in command))
                process = children.start(command, envs[slot], logfile)
                running[process] = (run_dir, slot, logfile, log_path, start)
            if stop.signal is not None:
                queue.clear()
                stop.forward(running)
            time.sleep(0.5)
            for process in [p for p in running if p.poll() is not None]:
                run_dir, slot, logfile, log_path, start = running.pop(process)
                logfile.close()
                if files.is_remote(run_dir):
                    files.upload_file(log_path, files.join(run_dir, "sweep.log"))
                free.append(slot)
                _record_exit(run_dir, process.returncode, log_path, progress, start, stop)
    stop.exit_if_stopped()


def _record_exit(run_dir, returncode, log_path, progress, start, stop) -> None:
    """Marks a run's subprocess done or failed, but one stopped by the sweep's own signal (it
    saved: unfinished, not failed) or one that met another process's live run there."""
    if stop.signal is not None:
        progress.end(run_dir, start)
        return
    if returncode == 0:
        run_state.mark_done(run_dir, progress.end(run_dir, start))
        return
    with open(log_path) as f:
        reason = one_line(f.read()[-4000:])
    if _running_elsewhere(run_dir):
        progress.end(run_dir, start)
        return
    progress.end(run_dir, start, failure=reason)
    run_state.mark_failed(run_dir, f"exit {returncode}: {reason}")


def _running_elsewhere(run_dir: str) -> bool:
    """Whether another process (another sweep driver, a run started by hand) holds the run."""
    holder = workdir_lib.live_holder(run_dir)
    if holder:
        log.warning("run %s is running under %s: left to it", os.path.basename(run_dir), holder)
    return holder is not None


def _local_log(run_dir: str) -> str:
    """Where a run's subprocess output goes: run_dir/sweep.log, or for a run in a bucket (which
    cannot be appended to) a local file that is uploaded there when the run ends."""
    if not files.is_remote(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        return os.path.join(run_dir, "sweep.log")
    folder = os.path.join(tempfile.gettempdir(), "mlm_jax_sweep_logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, run_dir.replace("://", "/").replace("/", "_") + ".log")


class _Progress:
    """The sweep's progress over runs: "[k/N]" lines, with an ETA from the runs finished so far."""

    def __init__(self, total: int, parallel: int = 1):
        self.total, self.parallel = total, parallel
        self.started = self.ended = self.failed = 0
        self.seconds = 0.0

    def start(self, run_dir: str) -> float:
        self.started += 1
        log.info("[%d/%d] training %s", self.started, self.total, os.path.basename(run_dir))
        return time.perf_counter()

    def end(self, run_dir: str, start: float, failure: str = "") -> float:
        elapsed = time.perf_counter() - start
        self.ended += 1
        self.seconds += elapsed
        if failure:
            self.failed += 1
            log.warning("run %s failed: %s", os.path.basename(run_dir), failure)
        left = self.total - self.ended
        eta = ""
        if left:
            minutes = self.seconds / self.ended * -(-left // self.parallel) / 60
            eta = f"; about {minutes:.0f} min to go"
        log.info(
            "[%d/%d done] %s %s after %.1f min (%d failed)%s",
            self.ended, self.total, os.path.basename(run_dir),
            "failed" if failure else "finished", elapsed / 60, self.failed, eta,
        )  # fmt: skip
        return elapsed


def _run_in_process(todo: list[tuple[str, dict, object]]) -> None:
    """One run after another; one failing run must not stop the sweep."""
    progress = _Progress(len(todo))
    for run_dir, _, run_config in todo:
        start = progress.start(run_dir)
        try:
            _train_in_process(run_config, run_dir)
        except Exception as e:
            if _running_elsewhere(run_dir):  # it started there since this sweep looked
                progress.end(run_dir, start)
                continue
            reason = f"{type(e).__name__}: {one_line(e)}"
            progress.end(run_dir, start, failure=one_line(e))
            run_state.mark_failed(run_dir, reason)
            continue
        run_state.mark_done(run_dir, progress.end(run_dir, start))


def _print_commands(todo: list[tuple[str, dict, object]], base_args: list[str]) -> None:
    """--launch=print: one `python -m mlm_jax.main ...` line per unfinished run, on stdout."""
    for run_dir, settings, _ in todo:
        command = ["python", *run_command(base_args, run_dir, settings)[1:]]
        print(" ".join(shlex.quote(c) for c in command))


def sky_job_commands(
    todo: list[tuple[str, dict, object]], base_args: list[str], workdir: str, launch_file: str
) -> list[list[str]]:
    """--launch=sky: one `sky jobs launch` per unfinished run. Its MLM_ARGS are the arguments of
    the run's --launch=print line, which launch/run.sh hands to `python -m mlm_jax.main`."""
    if not files.is_remote(workdir):
        raise SweepError(
            f"--launch=sky: --workdir={workdir} must be a bucket (gs://...): each run's job "
            "trains on its own VM, relaunched elsewhere after a preemption"
        )
    sweep = re.sub(r"[^a-z0-9]+", "-", workdir.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    commands = []
    for run_dir, settings, _ in todo:
        args = run_command(base_args, run_dir, settings)[3:]  # after `python -m mlm_jax.main`
        run = re.sub(r"[^a-z0-9]+", "-", run_dir.rsplit("/", 1)[-1].lower()).strip("-")
        commands.append(
            ["sky", "jobs", "launch", launch_file, "--name", f"{sweep}-{run}"[:63].strip("-"),
             "--env", f"MLM_ARGS={shlex.join(args)}", "--yes", "--detach-run"]
        )  # fmt: skip
    return commands


def _check_sky(workdir: str, base_args: list[str], launch_file: str, dry_run: bool) -> None:
    """--launch=sky's own needs, before anything is written: a bucket and SkyPilot's command."""
    sky_job_commands([], base_args, workdir, launch_file)  # a local workdir: refused
    if not dry_run and shutil.which("sky") is None:
        raise SweepError(cli.missing_package("`sky`", cli.install_extra("cloud"), "--launch=sky"))


def _devices_per_run(launch: str, parallel: int) -> int | None:
    """What each run will see: this machine's devices shared among the --parallel slots, or,
    for runs that train elsewhere, unknown here (None)."""
    if launch != "local":
        return None
    import jax

    return max(1, jax.device_count() // parallel)


def _submit_jobs(commands: list[list[str]], dry_run: bool) -> None:
    """Submits each job to SkyPilot's jobs controller (or, dry_run, prints its command)."""
    for command in commands:
        line = shlex.join(command)
        if dry_run:
            print(line)
            continue
        log.info("submitting %s", line)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SweepError(
                f"{line}: exit {done.returncode}: {one_line(done.stderr or done.stdout)}"
            )


def run_sweep(
    config,
    workdir: str,
    sweep_specs: list[str],
    *,
    base_args: list[str],
    parallel: int = 1,
    launch: str = "local",
    finetune: FinetunePlan | None = None,
    launch_file: str = "launch/tpu_v5e.yaml",
    dry_run: bool = False,
    baseline: str = "",
) -> list[dict]:
    """Checks every run, then runs (or prints, or submits) every unfinished one, then writes the
    report (not for print and sky, whose runs train elsewhere: --report collects them), with
    paired differences to `baseline` (KEY=VALUE) when given. dry_run: the checks, then the
    commands printed (a local sweep's as --launch=print's); nothing written."""
    if parallel < 1:
        raise SweepError(f"--parallel={parallel}: expected >= 1")
    axes = parse_axes(sweep_specs, config)
    runs = expand(axes)
    configs = [apply_settings(config, settings) for settings in runs]
    names = [run_name(settings) for settings in runs]
    check_names(names, runs)
    if baseline:
        parse_baseline(baseline, [list(keys) for keys, _ in axes])
    if launch == "sky":
        _check_sky(workdir, base_args, launch_file, dry_run)
    precheck.check_runs(
        names, runs, configs, base_args, devices_per_run=_devices_per_run(launch, parallel)
    )
    precheck.check_reachable(workdir)
    if dry_run and launch == "local":
        launch = "print"
    todo = _unfinished(workdir, names, runs, configs, launch)
    if not dry_run:
        _write_sweep_record(workdir, baseline, axes, names, runs, base_args)
    if launch == "print":
        _print_commands(todo, base_args)
        return []
    if launch == "sky":
        _submit_jobs(sky_job_commands(todo, base_args, workdir, launch_file), dry_run)
        return []
    log.info("%d of %d runs to train", len(todo), len(runs))
    if parallel > 1 and todo:
        _prepare_data([c for _, _, c in todo])
        _run_parallel([(d, s) for d, s, _ in todo], base_args, parallel)
    else:
        _run_in_process(todo)
    if finetune is not None:
        finetune_runs(workdir, names, finetune)
    return report.write_report(workdir, baseline=baseline)


def _unfinished(workdir: str, names, runs, configs, launch: str) -> list[tuple]:
    """(run dir, settings, config) of each run still to train: finished runs are skipped, and
    a local run live under another driver is left to it."""
    todo = []
    for name, settings, run_config in zip(names, runs, configs):
        run_dir = files.join(workdir, name)
        if is_finished(run_dir, run_config):
            log.info("skipping finished run %s", name)
            if launch in ("print", "sky"):
                print(f"# finished: {name}", file=sys.stderr)
            continue
        if launch == "local" and _running_elsewhere(run_dir):
            continue
        todo.append((run_dir, settings, run_config))
    return todo


def _write_sweep_record(workdir: str, baseline: str, axes, names, runs, base_args) -> None:
    """WORKDIR/sweep.json: what --report needs to rebuild the tables from the workdir alone."""
    sweep_record = {
        "baseline": baseline,
        "axes": [list(keys) for keys, _ in axes],
        "runs": [{"name": n, "settings": s} for n, s in zip(names, runs)],
        "config_args": base_args,
    }
    files.write_text(files.join(workdir, run_state.SWEEP_FILE), json.dumps(sweep_record, indent=2))
