"""Fine-tuning a sweep's finished runs: every task with every fine-tuning seed.

Each (task, seed) of a run goes to RUN/finetune/<task name>/seed=<s> (run_state reads it back).
A result counts only for the request it answers (task, epochs, length, seed and the checkpoint's
step, in sweep_request.json beside it, written after the result), so another task or a run
trained further since is fine-tuned again, and a rerun of the same sweep fine-tunes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os

from mlm_jax import files
from mlm_jax.finetuning import tasks as task_lib
from mlm_jax.sweep import SweepError, run_state

log = pylogging.getLogger("mlm_jax.sweep")


@dataclasses.dataclass(frozen=True)
class FinetunePlan:
    tasks: tuple[str, ...]  # task specs (mlm_jax.finetuning.tasks), distinct names
    seeds: tuple[int, ...] = (0,)  # fine-tuning seeds: classifier init, dropout, data order
    epochs: int = 3
    max_len: int = 0  # tokens per example; 0 = the run's data.seq_len


def make_plan(tasks, seeds=(0,), epochs: int = 3, max_len: int = 0) -> FinetunePlan | None:
    """The checked plan (None without tasks); one SweepError line for a bad value."""
    if not tasks:
        return None
    names: dict[str, str] = {}
    for spec in tasks:
        try:
            name = task_lib.task_name(spec)
        except ValueError as e:
            raise SweepError(str(e).replace("--task=", "--finetune_task=")) from None
        if name in names and names[name] != spec:
            raise SweepError(
                f"--finetune_task={names[name]} and {spec} would share the name {name!r} (the "
                "folder finetune/<name> and the table's column): put one in a folder of another name"
            )
        names[name] = spec
    try:
        seed_values = tuple(dict.fromkeys(int(s) for s in seeds))
    except ValueError:
        raise SweepError(
            f"--finetune_seeds={','.join(map(str, seeds))}: expected integers"
        ) from None
    if not seed_values or min(seed_values) < 0:
        raise SweepError(f"--finetune_seeds={seed_values}: expected one or more integers >= 0")
    if epochs < 1 or max_len < 0:
        raise SweepError(
            f"--finetune_epochs={epochs}, --finetune_max_len={max_len}: expected >= 1, >= 0"
        )
    return FinetunePlan(tuple(names.values()), seed_values, int(epochs), int(max_len))


def finetune_runs(workdir: str, run_names: list[str], plan: FinetunePlan) -> None:
    """Fine-tunes each finished run on every task and seed of the plan that it lacks."""
    for name in run_names:
        run_dir = files.join(workdir, name)
        if not run_state.is_finished(run_dir):
            continue
        for spec in plan.tasks:
            for seed in plan.seeds:
                finetune_one(run_dir, spec, seed, plan)


def finetune_one(run_dir: str, spec: str, seed: int, plan: FinetunePlan) -> None:
    """One fine-tuning into run_state.finetune_dir, unless that request is answered already;
    a failure is logged (the table shows no result) and the sweep goes on."""
    from mlm_jax.finetuning import loop
    from mlm_jax.training import checkpoint as ckpt

    out = run_state.finetune_dir(run_dir, task_lib.task_name(spec), seed)
    request = {
        "task": spec,
        "epochs": plan.epochs,
        "max_len": plan.max_len,
        "seed": seed,
        "step": ckpt.latest_step(run_dir),
    }
    request_file = files.join(out, run_state.FINETUNE_REQUEST)
    if run_state.read_json(request_file) == request and run_state.finetune_result(out):
        return
    files.remove(request_file)  # (a result without its request counts for nothing)
    try:
        loop.finetune(run_dir, spec, out, epochs=plan.epochs, max_len=plan.max_len, seed=seed)
    except Exception as e:  # noqa: BLE001 - recorded as a missing result, the sweep goes on
        log.warning(
            "fine-tuning %s on %s (seed %d) failed: %s",
            os.path.basename(run_dir),
            spec,
            seed,
            run_state.one_line(e),
        )
        return
    files.write_text(request_file, json.dumps(request))
