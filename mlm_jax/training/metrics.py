"""Where a run's numbers go: metrics.jsonl, TensorBoard, and a one-line progress report.

Only process 0 writes; the other hosts get a writer that does nothing, so the loop needs
no `if process_index == 0` of its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

from mlm_jax import files

log = logging.getLogger(__name__)

UPLOAD_EVERY_S = 60.0  # a bucket workdir's metrics and TensorBoard: upload at least this often


def _summary_writer_class():
    """tensorboardX's SummaryWriter without PyTorch: tensorboardX imports torch whenever it is
    installed (2-3 s of every run's start) only to accept torch tensors; runs log floats."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which it handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends `{"step": s, ...}` lines to workdir/metrics.jsonl and scalars to TensorBoard.

    start_step > 0 (a resumed run): events past it are dropped from metrics.jsonl and hidden in
    TensorBoard (its purge marker), since the run recomputes them exactly. start_step 0 (no
    checkpoint yet) drops them all: the step-0 eval is redone too.

    A workdir in a bucket (gs://) cannot be appended to: the writer keeps metrics.jsonl's text
    and writes TensorBoard into a local folder, and `flush` uploads both. The loop flushes
    after each checkpoint, so everything a resumed run would not recompute is in the bucket;
    writes also flush once UPLOAD_EVERY_S has passed since the last upload, for people
    watching the run.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, start_step: int = 0, wandb=None):
        self.enabled = enabled
        self._wandb = wandb  # metrics_wandb.WandbRun, or None
        self.path = files.join(workdir, "metrics.jsonl")
        self._remote = files.is_remote(workdir)
        self._tb = None
        self._tb_url = files.join(workdir, "tensorboard")
        self._lines: list[str] = []  # remote: the whole of metrics.jsonl
        self._dirty = False
        self._upload_every_s = UPLOAD_EVERY_S
        self._uploaded_at = time.monotonic()
        if enabled:
            kept_through = start_step if start_step > 0 else -1
            self.truncate_after(kept_through)
            if self._remote:
                self._tb_local = tempfile.mkdtemp(prefix="mlm_jax-tensorboard-")
                tb_dir = self._tb_local
            else:
                tb_dir = self._tb_url
            self._tb = _summary_writer_class()(tb_dir, purge_step=kept_through + 1)

    def truncate_after(self, step: int) -> None:
        """Drops events past `step`: a resumed run recomputes them exactly, so none are lost.

        A last line cut short by a killed process is dropped too.
        """
        if not self.enabled or not files.exists(self.path):
            return
        kept = []
        for line in files.read_text(self.path).splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict) or "step" not in event:
                log.warning("%s: kept a line that is not one of this run's events", self.path)
                kept.append(line + "\n")  # not ours to drop
            elif event["step"] <= step:
                kept.append(json.dumps(event) + "\n")
        files.write_text(self.path, "".join(kept))
        self._lines = kept

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        line = json.dumps(record) + "\n"
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), int(step))
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(step, scalars)
        if not self._remote:
            with open(self.path, "a") as f:
                f.write(line)
            return
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._uploaded_at >= self._upload_every_s:
            self.flush()

    def flush(self) -> None:
        """Uploads what a bucket workdir has not yet received (nothing to do on a local disk)."""
        if not (self.enabled and self._remote and self._dirty):
            return
        files.write_text(self.path, "".join(self._lines))
        for root, _, names in os.walk(self._tb_local):
            for name in names:
                local = os.path.join(root, name)
                relative = os.path.relpath(local, self._tb_local)
                files.upload_file(local, files.join(self._tb_url, *relative.split(os.sep)))
        self._dirty = False
        self._uploaded_at = time.monotonic()

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tb is not None:
            self._tb.close()
            self.flush()
            if self._remote:
                shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb = None


def read_metrics(workdir: str) -> list[dict]:
    """All events of a run's metrics.jsonl, in order."""
    path = files.join(workdir, "metrics.jsonl")
    if not files.exists(path):
        return []
    events = []
    for line in files.read_text(path).splitlines():
        try:
            event = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process
        if isinstance(event, dict) and "step" in event:
            events.append(event)
    return events


def _jsonable(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)


class Progress:
    """A progress line: step, loss, tokens/s and ETA, from host-side timing only."""

    def __init__(self, num_steps: int, first_step: int):
        self.num_steps = num_steps
        self.start_step = first_step
        self.start_time = time.perf_counter()

    def line(self, step: int, loss: float | None, tokens_per_s: float) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / max(done, 1) * (self.num_steps - step)
        shown = "n/a (no prediction)" if loss is None else f"{loss:.4f}"
        return (
            f"step {step}/{self.num_steps} | loss {shown} | "
            f"{tokens_per_s:,.0f} tok/s | ETA {_duration(eta)}"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def log_line(text: str) -> None:
    log.info(text)


def log_summary(workdir: str, result: dict[str, float], step: int | None) -> None:
    """The end of a run: its final numbers, where its checkpoint is, and what to run next."""
    shown = ", ".join(
        f"{k} {result[k]:.4f}"
        for k in ("eval/loss", "eval/accuracy", "eval_own/loss", "train/loss")
        if k in result
    )
    lines = [
        f"finished at step {step}: {shown or 'no metrics'}",
        f"checkpoint: {files.join(workdir, 'checkpoints', str(step))}",
        "next: fill in a [MASK], export to Hugging Face, or look at the curves:",
        f'  python -m mlm_jax.fill_mask --workdir={workdir} "The [MASK] statement returns a value."',
        f"  python -m mlm_jax.hf export --workdir={workdir} --out_dir={workdir.rstrip('/')}_hf",
        _tensorboard_hint(workdir),
    ]
    for line in lines:
        log.info(line)


def _tensorboard_hint(workdir: str) -> str:
    """The curves' command, with its install where TensorBoard is not (no requirement has it)."""
    command = f"tensorboard --logdir={files.join(workdir, 'tensorboard')}"
    return (
        f"  {command}" if shutil.which("tensorboard") else f"  pip install tensorboard && {command}"
    )
