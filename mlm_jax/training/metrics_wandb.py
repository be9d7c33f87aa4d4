"""A run's scalars, resolved config and sweep axes sent to Weights & Biases (log.wandb_project).

Optional: the `[wandb]` extra. MosaicBERT, ModernBERT, Cramming and NeoBERT all log there, so
researchers compare runs in it. The run sends what metrics.jsonl holds, under the same names,
against its own step (`define_metric`: W&B's internal step only counts calls, so a resumed
run's recomputed events do not clash with it). A run in a sweep (its folder's parent holds the
sweep's sweep.json) is grouped by the sweep's folder and carries its swept values as
`sweep_axes`. The W&B run id is kept in WORKDIR/wandb_run_id, so a resumed run continues the
same W&B run. Offline (WANDB_MODE=offline) it writes W&B's files under WORKDIR/wandb/ for
`wandb sync`, needing no network.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid

from mlm_jax import cli, files

RUN_ID_FILE = "wandb_run_id"
SWEEP_FILE = "sweep.json"  # (sweep/run_state.SWEEP_FILE; not imported: no sweep import here)


def check_available(project: str) -> None:
    """One line naming the extra when log.wandb_project is set and wandb is not installed."""
    import importlib.util

    if project and importlib.util.find_spec("wandb") is None:
        raise ValueError(
            f"config.log.wandb_project={project!r}: "
            + cli.missing_package("wandb", cli.install_extra("wandb"), "logging to W&B")
        )


def open_run(config, workdir: str, *, enabled: bool) -> WandbRun | None:
    """The run's W&B run when log.wandb_project names one (process 0 only), else None."""
    project = config.log.wandb_project
    return WandbRun(project, workdir, config.to_dict()) if enabled and project else None


class WandbRun:
    """The W&B side of MetricsWriter: `log` each event, `finish` at the end."""

    def __init__(self, project: str, workdir: str, config: dict):
        import wandb

        self._wandb = wandb
        name = os.path.basename(workdir.rstrip("/"))
        sweep = sweep_of(workdir)
        self.run = wandb.init(
            project=project,
            id=_run_id(workdir),
            resume="allow",
            name=name,
            group=sweep["group"] if sweep else None,
            dir=tempfile.gettempdir() if files.is_remote(workdir) else workdir,
            config={**config, **({"sweep_axes": sweep["axes"]} if sweep else {})},
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({"step": int(step), **{k: float(v) for k, v in scalars.items()}})

    def finish(self) -> None:
        self.run.finish()


def sweep_of(workdir: str) -> dict | None:
    """{"group": the sweep's folder name, "axes": this run's swept values} for a run inside a
    sweep's folder, else None."""
    parent = workdir.rstrip("/").rsplit("/", 1)[0]
    path = files.join(parent, SWEEP_FILE)
    if parent == workdir.rstrip("/") or not files.exists(path):
        return None
    record = json.loads(files.read_text(path))
    name = os.path.basename(workdir.rstrip("/"))
    for run in record.get("runs", []):
        if run.get("name") == name:
            return {"group": os.path.basename(parent), "axes": run.get("settings", {})}
    return None


def _run_id(workdir: str) -> str:
    """The id this workdir's W&B run has had since its first start (a resumed run continues it)."""
    path = files.join(workdir, RUN_ID_FILE)
    if files.exists(path):
        return files.read_text(path).strip()
    run_id = uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
    files.write_text(path, run_id + "\n")
    return run_id
