"""Ablation sweeps: the cross product of `--sweep` axes, one run per point, then tables and plots.

    python experiments/sweep.py --config=configs/tiny.py --workdir=DIR \
        --sweep=masking.ratio=0.15,0.3,0.4,0.6 --sweep=seed=0,1 [--config.train.num_steps=300]
    python experiments/sweep.py --workdir=DIR --report        # tables and plots, no training

Each run trains through the same `mlm_jax.train.train_and_evaluate` as a single run, in its own
sub-workdir named after its settings (`DIR/masking.ratio=0.3,seed=1`). A run is finished when
its latest checkpoint is at train.num_steps (or, checkpoints deleted, its marker
`DIR/<run>/sweep_done.json` says so); finished runs are skipped and interrupted ones resume from their checkpoints, so rerunning a
sweep is always safe. A failing run does not stop the others; results.csv marks it failed
with the reason.

Axes: `--sweep=KEY=V1,V2,...` over any leaf of the config; values are parsed with the type of
the config field. Keys that must move together form one axis with `/` between keys and values:
`--sweep=masking.mask_prob/masking.random_prob=0.8/0.1,1.0/0.0` (80/10/10 vs 100/0/0).

Where runs go:
  default         one after another in this process.
  --parallel=N    N subprocesses (`python -m mlm_jax.main ...`), devices divided between them:
                  GPUs through CUDA_VISIBLE_DEVICES (contiguous groups of the visible GPUs);
                  on CPU each gets XLA_FLAGS=--xla_force_host_platform_device_count=<count/N>
                  (count from this process's XLA_FLAGS, default 1). TPU chips are not divided
                  here: on a TPU VM run sequentially or use --launch=print.
  --launch=print  prints one `python -m mlm_jax.main ...` command per run for your launcher.

Outputs in DIR: sweep.json (axes and runs), results.csv (one row per run), results.md (means
and standard deviations over seeds), metric_vs_<axis>.png (final metrics against the swept
value, seed error bars) and eval_curves.png (eval loss/accuracy of every run over steps).
`--finetune_task=TASK` also fine-tunes each finished run (mlm_jax.finetune) into DIR/<run>/finetune.
DIR may be a bucket (gs://...): everything above goes there (a run's sweep.log is uploaded when
the run ends).
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging as pylogging
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, REPO_ROOT)  # run from a checkout

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mlm_jax import cli, files  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined on demand so importing this module (tests) defines no flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Base experiment config (configs/<exp>.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Sweep directory: one sub-workdir per run.")
    flags.DEFINE_multi_string(
        "sweep", [], "KEY=V1,V2,... (or K1/K2=A1/A2,B1/B2 for keys that move together)."
    )
    flags.DEFINE_integer("parallel", 1, "Runs at once (>1: one subprocess each).")
    flags.DEFINE_enum("launch", "local", ["local", "print"], "local: run; print: commands.")
    flags.DEFINE_bool("report", False, "Only regenerate results.* and plots from DIR.")
    flags.DEFINE_string(
        "finetune_task", "", "Fine-tune every finished run on this task (see mlm_jax.finetune)."
    )
    flags.DEFINE_integer("finetune_epochs", 3, "Epochs of each fine-tuning.")
    flags.DEFINE_integer(
        "finetune_max_len", 0, "Tokens per fine-tuning example; 0 = the run's data.seq_len."
    )
    flags.mark_flag_as_required("workdir")


log = pylogging.getLogger("mlm_jax.sweep")

SWEEP_FILE = "sweep.json"
DONE_MARKER = "sweep_done.json"
FAILED_MARKER = "sweep_failed.json"
FINETUNE_DIR = "finetune"
FINETUNE_REQUEST = "sweep_request.json"  # in FINETUNE_DIR: what its result.json answers


class SweepError(ValueError):
    """Bad sweep input, reported as one line before any run starts."""


# ----------------------------------------------------------------------------- axes and runs


def _leaf(config, key: str):
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            raise SweepError(
                f"--sweep key {key!r}: {'.'.join(parts[: i + 1])!r} is not in the config"
            )
        node = node[part]
    if hasattr(node, "keys"):
        raise SweepError(f"--sweep key {key!r} is a section, not a field; name one of its fields")
    return node


def parse_value(key: str, text: str, current):
    """`text` parsed with the type of the config field `key` (whose value is `current`)."""
    text = text.strip()
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise SweepError(f"--sweep {key}={text!r}: expected a bool (true/false)")
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise SweepError(
                    f"--sweep {key}={text!r}: expected {kind.__name__} like the config's "
                    f"{current!r}"
                ) from None
    if isinstance(current, str):
        return text
    raise SweepError(
        f"--sweep key {key!r} holds a {type(current).__name__}; only bool, int, float and str "
        "fields can be swept"
    )


def parse_axes(specs: list[str], config) -> list[tuple[tuple[str, ...], list[tuple]]]:
    """[(keys, [values tuple per point])] from `--sweep` strings, checked against `config`."""
    if not specs:
        raise SweepError(
            "no --sweep given: name at least one axis, e.g. --sweep=masking.ratio=0.15,0.4"
        )
    axes, seen = [], set()
    for spec in specs:
        if "=" not in spec:
            raise SweepError(f"--sweep={spec!r}: expected KEY=V1,V2,...")
        key_text, values_text = spec.split("=", 1)
        keys = tuple(k.strip() for k in key_text.split("/"))
        for key in keys:
            if key in seen:
                raise SweepError(f"--sweep key {key!r} appears twice")
            seen.add(key)
        currents = [_leaf(config, key) for key in keys]
        items = [v for v in values_text.split(",") if v.strip()]
        if not items:
            raise SweepError(f"--sweep={spec!r}: empty value list")
        points = []
        for item in items:
            parts = item.split("/") if len(keys) > 1 else [item]
            if len(parts) != len(keys):
                raise SweepError(
                    f"--sweep={spec!r}: value {item!r} has {len(parts)} parts for {len(keys)} keys"
                )
            points.append(tuple(parse_value(k, p, c) for k, p, c in zip(keys, parts, currents)))
        if len(set(points)) != len(points):
            raise SweepError(f"--sweep={spec!r}: repeated value")
        axes.append((keys, points))
    return axes


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def run_name(settings: dict) -> str:
    """A filesystem-safe directory name such as `masking.ratio=0.3,seed=1`."""
    text = ",".join(f"{k}={format_value(v)}" for k, v in settings.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def _check_names(names: list[str], runs: list[dict]) -> None:
    """Each run needs its own directory: run_name maps some characters to "_", and a name may
    not exceed what a filesystem allows."""
    seen = {}
    for name, settings in zip(names, runs):
        if name in seen:
            raise SweepError(
                f"runs {seen[name]} and {settings} would share the directory {name!r} "
                "(run_name keeps only [A-Za-z0-9._=,+-]); make the swept values differ there"
            )
        if len(name.encode()) > 255:
            raise SweepError(f"run directory name {name[:60]!r}... is over 255 bytes")
        seen[name] = settings


def expand(axes) -> list[dict]:
    """The cross product of the axes: one {key: value} dict per run, in axis order."""
    runs = []
    for combo in itertools.product(*(points for _, points in axes)):
        settings = {}
        for (keys, _), point in zip(axes, combo):
            settings.update(zip(keys, point))
        runs.append(settings)
    return runs


def apply_settings(config, settings: dict):
    """A copy of the (locked) config with the run's settings; unknown keys cannot slip in."""
    config = copy.deepcopy(config)
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        setattr(node, last, value)
    return config


# ----------------------------------------------------------------------------- run state


def _read_json(path: str):
    try:
        return json.loads(files.read_text(path))
    except (OSError, ValueError):
        return None


def _num_steps(run_dir: str, config=None) -> int | None:
    if config is not None:
        return int(config.train.num_steps)
    saved = _read_json(files.join(run_dir, "config.json"))
    return int(saved["train"]["num_steps"]) if saved else None


def is_finished(run_dir: str, config=None) -> bool:
    """The latest checkpoint is the last step, or (checkpoints since deleted) the marker says so.

    Reading the checkpoint first means a run launched elsewhere (--launch=print) counts, and a
    run whose last checkpoint was lost counts as unfinished even if an old marker remains.
    """
    from mlm_jax import checkpoint as ckpt

    step, total = ckpt.latest_step(run_dir), _num_steps(run_dir, config)
    if step is not None:
        return total is not None and step >= total
    marker = _read_json(files.join(run_dir, DONE_MARKER))
    return marker is not None and marker.get("num_steps") == total


def _mark_done(run_dir: str, wall_s: float) -> None:
    previous = _read_json(files.join(run_dir, DONE_MARKER)) or {}
    files.remove(files.join(run_dir, FAILED_MARKER))
    record = {
        "wall_s": previous.get("wall_s", 0.0) + wall_s,  # all attempts that ran to their end
        "num_steps": _num_steps(run_dir),
        "time": time.time(),
    }
    files.write_text(files.join(run_dir, DONE_MARKER), json.dumps(record))


def _mark_failed(run_dir: str, reason: str) -> None:
    record = {"reason": reason, "time": time.time()}
    files.write_text(files.join(run_dir, FAILED_MARKER), json.dumps(record))


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else "unknown error"
    return line if len(line) <= 300 else line[:297] + "..."


# ----------------------------------------------------------------------------- launching


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
    from mlm_jax import train

    train.train_and_evaluate(config, run_dir)


def _device_envs(parallel: int) -> list[dict]:
    """One environment per concurrent slot, each seeing its share of the devices."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH", "")]))
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
            log.warning("could not prepare the data ahead of the runs: %s", _one_line(e))


def _run_parallel(todo: list[tuple[str, dict]], base_args: list[str], parallel: int) -> None:
    envs = _device_envs(parallel)
    free, running = list(range(parallel)), {}
    queue = list(todo)
    while queue or running:
        while queue and free:
            run_dir, settings = queue.pop(0)
            slot = free.pop(0)
            log_path = _local_log(run_dir)
            logfile = open(log_path, "a")  # noqa: SIM115
            command = run_command(base_args, run_dir, settings)
            log.info("starting %s", " ".join(shlex.quote(c) for c in command))
            process = subprocess.Popen(
                command, env=envs[slot], stdout=logfile, stderr=subprocess.STDOUT
            )
            running[process] = (run_dir, slot, logfile, log_path, time.perf_counter())
        time.sleep(0.5)
        for process in [p for p in running if p.poll() is not None]:
            run_dir, slot, logfile, log_path, start = running.pop(process)
            logfile.close()
            if files.is_remote(run_dir):
                files.upload_file(log_path, files.join(run_dir, "sweep.log"))
            free.append(slot)
            if process.returncode == 0:
                _mark_done(run_dir, time.perf_counter() - start)
                log.info("finished %s", os.path.basename(run_dir))
            else:
                with open(log_path) as f:
                    reason = _one_line(f.read()[-4000:])
                _mark_failed(run_dir, f"exit {process.returncode}: {reason}")
                log.warning("run %s failed: %s", os.path.basename(run_dir), reason)


def _local_log(run_dir: str) -> str:
    """Where a run's subprocess output goes: run_dir/sweep.log, or for a run in a bucket (which
    cannot be appended to) a local file that is uploaded there when the run ends."""
    if not files.is_remote(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        return os.path.join(run_dir, "sweep.log")
    folder = os.path.join(tempfile.gettempdir(), "mlm_jax_sweep_logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, run_dir.replace("://", "/").replace("/", "_") + ".log")


def run_sweep(
    config,
    workdir: str,
    sweep_specs: list[str],
    *,
    base_args: list[str],
    parallel: int = 1,
    launch: str = "local",
    finetune_task: str = "",
    finetune_epochs: int = 3,
    finetune_max_len: int = 0,
) -> list[dict]:
    """Validates the axes, runs (or prints) every unfinished run, then writes the report."""
    if parallel < 1:
        raise SweepError(f"--parallel={parallel}: expected >= 1")
    axes = parse_axes(sweep_specs, config)
    runs = expand(axes)
    configs = [apply_settings(config, settings) for settings in runs]
    names = [run_name(settings) for settings in runs]
    _check_names(names, runs)
    sweep_record = {
        "axes": [list(keys) for keys, _ in axes],
        "runs": [{"name": n, "settings": s} for n, s in zip(names, runs)],
        "config_args": base_args,
    }
    files.write_text(files.join(workdir, SWEEP_FILE), json.dumps(sweep_record, indent=2))
    todo = []
    for name, settings, run_config in zip(names, runs, configs):
        run_dir = files.join(workdir, name)
        if is_finished(run_dir, run_config):
            log.info("skipping finished run %s", name)
            if launch == "print":
                print(f"# finished: {name}", file=sys.stderr)
            continue
        todo.append((run_dir, settings, run_config))
    if launch == "print":
        for run_dir, settings, _ in todo:
            command = ["python", *run_command(base_args, run_dir, settings)[1:]]
            print(" ".join(shlex.quote(c) for c in command))
        return []
    log.info("%d of %d runs to train", len(todo), len(runs))
    if parallel > 1 and todo:
        _prepare_data([c for _, _, c in todo])
        _run_parallel([(d, s) for d, s, _ in todo], base_args, parallel)
    else:
        for run_dir, _, run_config in todo:
            log.info("training %s", os.path.basename(run_dir))
            start = time.perf_counter()
            try:
                _train_in_process(run_config, run_dir)
            except Exception as e:  # one failing run must not stop the sweep
                log.warning("run %s failed: %s", os.path.basename(run_dir), _one_line(e))
                _mark_failed(run_dir, f"{type(e).__name__}: {_one_line(e)}")
                continue
            _mark_done(run_dir, time.perf_counter() - start)
    if finetune_task:
        for name in names:
            _finetune_run(
                files.join(workdir, name), finetune_task, finetune_epochs, finetune_max_len
            )
    return write_report(workdir)


def _finetune_run(run_dir: str, task: str, epochs: int, max_len: int) -> None:
    from mlm_jax import checkpoint as ckpt
    from mlm_jax import finetune

    out = files.join(run_dir, FINETUNE_DIR)
    if not is_finished(run_dir):
        return
    # A result counts only for the same request on the same checkpoint (another task, or a run
    # trained further since, fine-tunes again).
    request = {
        "task": task,
        "epochs": epochs,
        "max_len": max_len,
        "step": ckpt.latest_step(run_dir),
    }
    result_file = files.join(out, finetune.RESULT_FILE)
    request_file = files.join(out, FINETUNE_REQUEST)
    if files.exists(result_file) and _read_json(request_file) == request:
        return
    files.remove(result_file)
    files.write_text(request_file, json.dumps(request))
    try:
        finetune.finetune(run_dir, task, out, epochs=epochs, max_len=max_len)
    except Exception as e:  # noqa: BLE001 - recorded in the table, the sweep goes on
        log.warning("fine-tuning %s failed: %s", os.path.basename(run_dir), _one_line(e))


# ----------------------------------------------------------------------------- report


METRICS = (
    ("eval_loss", "eval/loss"),
    ("eval_accuracy", "eval/accuracy"),
    ("own_loss", "eval_own/loss"),
    ("own_accuracy", "eval_own/accuracy"),
)


def _final_eval(events: list[dict]) -> dict:
    evals = [e for e in events if "eval/loss" in e]
    if not evals:
        return {}
    last = evals[-1]
    out = {name: last.get(key) for name, key in METRICS}
    if out["own_loss"] is None:  # trained at the eval masking: the same numbers
        out["own_loss"], out["own_accuracy"] = out["eval_loss"], out["eval_accuracy"]
    out["step"] = last["step"]
    return out


def finetune_accuracy(run_dir: str, step: int | None) -> float | None:
    """The fine-tune result of the run's checkpoint at `step`; None if none, or an older one's."""
    out = files.join(run_dir, FINETUNE_DIR)
    result, request = (
        _read_json(files.join(out, "result.json")),
        _read_json(files.join(out, FINETUNE_REQUEST)),
    )
    if result is None or request is None or request.get("step") != step:
        return None
    return result["dev/accuracy"]


def collect(workdir: str) -> tuple[list[list[str]], list[dict]]:
    """(axes, one row per run) read from the sweep's workdirs only."""
    from mlm_jax import checkpoint as ckpt
    from mlm_jax import metrics as metrics_lib

    sweep = _read_json(files.join(workdir, SWEEP_FILE))
    if sweep is None:
        raise SweepError(f"{files.join(workdir, SWEEP_FILE)} not found: not a sweep directory")
    rows = []
    for run in sweep["runs"]:
        run_dir = files.join(workdir, run["name"])
        row = {"run": run["name"], **run["settings"]}
        events = metrics_lib.read_metrics(run_dir)
        row.update(_final_eval(events))
        saved = _read_json(files.join(run_dir, "config.json"))
        step = ckpt.latest_step(run_dir) if files.isdir(run_dir) else None
        if saved and step is not None:
            row["tokens_seen"] = step * saved["train"]["batch_size"] * saved["data"]["seq_len"]
        done = _read_json(files.join(run_dir, DONE_MARKER))
        failed = _read_json(files.join(run_dir, FAILED_MARKER))
        row["wall_s"] = round(done["wall_s"], 1) if done else None
        row["finetune_accuracy"] = finetune_accuracy(run_dir, step)
        if is_finished(run_dir):  # (a run that failed once and was finished since is done)
            row["status"], row["reason"] = "done", ""
        elif failed:
            row["status"], row["reason"] = "failed", failed["reason"]
        else:
            row["status"], row["reason"] = ("partial" if events else "missing"), ""
        rows.append(row)
    return sweep["axes"], rows


def _columns(axes) -> tuple[list[str], list[str]]:
    keys = [k for group in axes for k in group]
    values = [name for name, _ in METRICS] + ["finetune_accuracy", "tokens_seen", "wall_s"]
    return keys, values


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(path: str, axes, rows: list[dict]) -> None:
    import csv

    keys, values = _columns(axes)
    header = ["run", *keys, "status", "step", *values, "reason"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(h)) for h in header])
    files.write_text(path, text.getvalue())


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def group_over_seeds(axes, rows: list[dict]) -> list[dict]:
    """One entry per setting of the non-seed keys: mean and sample std of each metric."""
    keys, values = _columns(axes)
    group_keys = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)
    out = []
    for setting, members in groups.items():
        entry = {"settings": dict(zip(group_keys, setting)), "n": len(members), "counts": {}}
        for name in values:
            got = [float(m[name]) for m in members if m.get(name) is not None]
            entry[name] = _mean_std(got) if got else None
            entry["counts"][name] = len(got)  # runs behind this metric's mean (<= n)
        out.append(entry)
    return out


def write_markdown(path: str, axes, rows: list[dict]) -> None:
    keys, values = _columns(axes)
    group_keys = [k for k in keys if k != "seed"]
    grouped = group_over_seeds(axes, rows)
    header = [*group_keys, "seeds", *values]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in grouped:
        cells = [_cell(entry["settings"][k]) for k in group_keys] + [str(entry["n"])]
        for name in values:
            stat = entry[name]
            if stat is None:
                cells.append("")
            elif name in ("tokens_seen", "wall_s"):
                cells.append(f"{stat[0]:.0f}")
            else:
                mean, std = stat
                cell = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
                if entry["counts"][name] < entry["n"]:  # e.g. a fine-tune that failed
                    cell += f" (n={entry['counts'][name]})"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "done"]
    notes = [
        "",
        "eval_* = held-out MLM at the common eval masking (eval.mask_ratio); own_* = at the "
        "run's training masking. Mean ± sample std over seeds; (n=k) marks a mean over fewer "
        "runs than the seeds column.",
    ]
    for r in failed:
        notes.append(f"- {r['run']}: {r['status']} {r.get('reason', '')}".rstrip())
    files.write_text(path, "\n".join(lines + notes) + "\n")


def _axis_label(keys) -> str:
    return "/".join(keys)


def plot_metrics(workdir: str, axes, rows: list[dict]) -> list[str]:
    """Per non-seed axis: final metrics against the axis value, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = group_over_seeds(axes, rows)
    if not grouped:
        return []
    panels = [name for name, _ in METRICS]
    if any(g["finetune_accuracy"] for g in grouped):
        panels.append("finetune_accuracy")
    paths = []
    for keys in axes:
        if keys == ["seed"]:
            continue
        others = [k for group in axes for k in group if k not in keys and k != "seed"]
        x_values = sorted({tuple(g["settings"][k] for k in keys) for g in grouped}, key=str)
        numeric = len(keys) == 1 and all(isinstance(x[0], int | float) for x in x_values)
        if numeric:
            x_values.sort()
        fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        lines = {}
        for g in grouped:
            lines.setdefault(tuple(g["settings"][k] for k in others), []).append(g)
        for ax, name in zip(axs[0], panels):
            for other, members in sorted(lines.items(), key=str):
                members = sorted(
                    members, key=lambda g: x_values.index(tuple(g["settings"][k] for k in keys))
                )
                members = [m for m in members if m[name] is not None]
                if not members:
                    continue
                xs = [
                    m["settings"][keys[0]]
                    if numeric
                    else x_values.index(tuple(m["settings"][k] for k in keys))
                    for m in members
                ]
                ys = [m[name][0] for m in members]
                errs = [m[name][1] or 0.0 for m in members]
                label = ", ".join(f"{k}={format_value(v)}" for k, v in zip(others, other))
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label or None)
            if not numeric:
                ax.set_xticks(range(len(x_values)))
                ax.set_xticklabels(["/".join(format_value(v) for v in x) for x in x_values])
            ax.set_xlabel(_axis_label(keys))
            ax.set_title(name)
            ax.grid(alpha=0.3)
        if others:
            axs[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = files.join(workdir, f"metric_vs_{_axis_label(keys).replace('/', '+')}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def plot_curves(workdir: str, rows: list[dict]) -> str | None:
    """Eval loss and accuracy over steps, every run on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlm_jax import metrics as metrics_lib

    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    drawn = 0
    for row in rows:
        events = [
            e
            for e in metrics_lib.read_metrics(files.join(workdir, row["run"]))
            if isinstance(e.get("eval/loss"), float)
        ]
        if not events:
            continue
        steps = [e["step"] for e in events]
        for ax, key in zip(axs, ("eval/loss", "eval/accuracy")):
            ax.plot(steps, [e[key] for e in events], label=row["run"])
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, key in zip(axs, ("eval/loss", "eval/accuracy")):
        ax.set_xlabel("step")
        ax.set_title(f"{key} (common eval masking)")
        ax.grid(alpha=0.3)
    axs[1].legend(fontsize=7)
    fig.tight_layout()
    path = files.join(workdir, "eval_curves.png")
    _save_figure(fig, path)
    return path


def _save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    files.write_bytes(path, png.getvalue())


def write_report(workdir: str) -> list[dict]:
    axes, rows = collect(workdir)
    write_csv(files.join(workdir, "results.csv"), axes, rows)
    write_markdown(files.join(workdir, "results.md"), axes, rows)
    plots = plot_metrics(workdir, axes, rows)
    curves = plot_curves(workdir, rows)
    done = sum(r["status"] == "done" for r in rows)
    log.info(
        "report: %d/%d runs done; wrote results.csv, results.md, %s",
        done,
        len(rows),
        ", ".join(os.path.basename(p) for p in [*plots, curves] if p),
    )
    return rows


# ----------------------------------------------------------------------------- entry point


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("mlm_jax").setLevel(pylogging.INFO)
    with cli.one_line_errors((SweepError,)):
        if FLAGS.report:
            write_report(FLAGS.workdir)
            print(files.read_text(files.join(FLAGS.workdir, "results.md")))
            return
        if FLAGS.config is None:
            raise SweepError("--config is required to run a sweep (or pass --report)")
        rows = run_sweep(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.sweep,
            base_args=config_args(sys.argv[1:]),
            parallel=FLAGS.parallel,
            launch=FLAGS.launch,
            finetune_task=FLAGS.finetune_task,
            finetune_epochs=FLAGS.finetune_epochs,
            finetune_max_len=FLAGS.finetune_max_len,
        )
    if rows:
        print(files.read_text(files.join(FLAGS.workdir, "results.md")))
        if any(r["status"] != "done" for r in rows):
            sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
