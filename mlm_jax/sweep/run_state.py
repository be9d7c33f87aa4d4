"""What a sweep run's directory says about the run: finished, failed, its last eval, its fine-tune.

Execution writes the markers; the report reads them. Everything here reads files only, so a
run trained elsewhere (--launch=print) or in a bucket is judged the same way.
"""

from __future__ import annotations

import json
import time

from mlm_jax import files

SWEEP_FILE = "sweep.json"  # in the sweep directory: its axes and runs
DONE_MARKER = "sweep_done.json"
FAILED_MARKER = "sweep_failed.json"
FINETUNE_DIR = "finetune"
FINETUNE_REQUEST = "sweep_request.json"  # beside a fine-tuning's result.json: what it answers

# (column in results.csv, key in metrics.jsonl) of a run's final eval.
METRICS = (
    ("eval_loss", "eval/loss"),
    ("eval_accuracy", "eval/accuracy"),
    ("eval_nll_bound", "eval/nll_bound"),  # the likelihood bound, nats per token
    ("own_loss", "eval_own/loss"),
    ("own_accuracy", "eval_own/accuracy"),
    ("eval_masked_fraction", "eval/masked_fraction"),
)
# (column, key in the train events): averaged over all of the run's train events.
TRAIN_MEANS = (("masked_fraction", "train/masked_fraction"),)


def read_json(path: str):
    try:
        return json.loads(files.read_text(path))
    except (OSError, ValueError):
        return None


def _num_steps(run_dir: str, config=None) -> int | None:
    if config is not None:
        return int(config.train.num_steps)
    saved = read_json(files.join(run_dir, "config.json"))
    return int(saved["train"]["num_steps"]) if saved else None


def is_finished(run_dir: str, config=None) -> bool:
    """The latest checkpoint is the last step, or (checkpoints since deleted) the marker says so.

    Reading the checkpoint first means a run launched elsewhere (--launch=print) counts, and a
    run whose last checkpoint was lost counts as unfinished even if an old marker remains.
    """
    from mlm_jax.training import checkpoint as ckpt

    step, total = ckpt.latest_step(run_dir), _num_steps(run_dir, config)
    if step is not None:
        return total is not None and step >= total
    marker = read_json(files.join(run_dir, DONE_MARKER))
    return marker is not None and marker.get("num_steps") == total


def mark_done(run_dir: str, wall_s: float) -> None:
    previous = read_json(files.join(run_dir, DONE_MARKER)) or {}
    files.remove(files.join(run_dir, FAILED_MARKER))
    record = {
        "wall_s": previous.get("wall_s", 0.0) + wall_s,  # all attempts that ran to their end
        "num_steps": _num_steps(run_dir),
        "time": time.time(),
    }
    files.write_text(files.join(run_dir, DONE_MARKER), json.dumps(record))


def mark_failed(run_dir: str, reason: str) -> None:
    record = {"reason": reason, "time": time.time()}
    files.write_text(files.join(run_dir, FAILED_MARKER), json.dumps(record))


def one_line(text: str) -> str:
    """The last non-empty line of an error or a log, at most 300 characters: a table cell."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else "unknown error"
    return line if len(line) <= 300 else line[:297] + "..."


def final_eval(events: list[dict]) -> dict:
    """The METRICS columns (and step) of the run's last eval in metrics.jsonl; {} if none."""
    evals = [e for e in events if "eval/loss" in e]
    if not evals:
        return {}
    last = evals[-1]
    out = {name: last.get(key) for name, key in METRICS}
    if out["own_loss"] is None:  # trained at the eval masking: the same numbers
        out["own_loss"], out["own_accuracy"] = out["eval_loss"], out["eval_accuracy"]
    out["step"] = last["step"]
    for name, key in TRAIN_MEANS:
        seen = [e[key] for e in events if isinstance(e.get(key), float)]
        out[name] = sum(seen) / len(seen) if seen else None
    return out


def finetune_dir(run_dir: str, task: str, seed: int) -> str:
    """Where the sweep fine-tunes a run on `task` (its name) with fine-tuning seed `seed`."""
    return files.join(run_dir, FINETUNE_DIR, task, f"seed={seed}")


def finetune_result(out: str) -> dict | None:
    """The result.json of a fine-tuning directory, None if it has none (or not one of ours)."""
    result = read_json(files.join(out, "result.json"))
    return result if isinstance(result, dict) and "dev/accuracy" in result else None


def _answered(out: str, step: int | None) -> tuple[dict, dict] | None:
    """(request, result) of a fine-tuning of the run's checkpoint at `step`; None otherwise."""
    request = read_json(files.join(out, FINETUNE_REQUEST))
    result = finetune_result(out)
    if result is None or not isinstance(request, dict) or request.get("step") != step:
        return None
    return request, result


def finetune_results(run_dir: str, step: int | None) -> dict[str, dict[int, float]]:
    """{task name: {fine-tuning seed: dev accuracy}} of the run's checkpoint at `step`: a result
    of another (older) checkpoint, or one without its request, is left out. An older sweep's
    single fine-tuning (FINETUNE_DIR/result.json itself) counts as seed 0 of its task."""
    from mlm_jax.finetuning.tasks import task_name

    root = files.join(run_dir, FINETUNE_DIR)
    if step is None or not files.isdir(root):
        return {}
    out: dict[str, dict[int, float]] = {}
    legacy = _answered(root, step)
    if legacy:
        out[task_name(legacy[0]["task"])] = {0: float(legacy[1]["dev/accuracy"])}
    for task in files.listdir(root):
        task_dir = files.join(root, task)
        if not files.isdir(task_dir):
            continue
        for folder in files.listdir(task_dir):
            got = _answered(files.join(task_dir, folder), step)
            if folder.startswith("seed=") and got:
                out.setdefault(task, {})[int(got[0]["seed"])] = float(got[1]["dev/accuracy"])
    return out
