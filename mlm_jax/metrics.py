"""Where a run's numbers go: metrics.jsonl, TensorBoard, and a one-line progress report.

Only process 0 writes; the other hosts get a writer that does nothing, so the loop needs
no `if process_index == 0` of its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends `{"step": s, ...}` lines to workdir/metrics.jsonl and scalars to TensorBoard.

    start_step > 0 (a resumed run): events past it are dropped from metrics.jsonl and hidden in
    TensorBoard (its purge marker), since the run recomputes them exactly. start_step 0 (no
    checkpoint yet) drops them all: the step-0 eval is redone too.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            kept_through = start_step if start_step > 0 else -1
            self.truncate_after(kept_through)
            purge_step = kept_through + 1
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge_step)

    def truncate_after(self, step: int) -> None:
        """Drops events past `step`: a resumed run recomputes them exactly, so none are lost.

        A last line cut short by a killed process is dropped too.
        """
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event["step"] <= step:
                    kept.append(json.dumps(event) + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All events of a run's metrics.jsonl, in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonable(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)


class Progress:
    """A progress line: step, loss, tokens/s and ETA, from host-side timing only."""

    def __init__(self, num_steps: int, first_step: int):
        self.num_steps = num_steps
        self.start_step = first_step
        self.start_time = time.perf_counter()

    def line(self, step: int, loss: float, tokens_per_s: float) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / max(done, 1) * (self.num_steps - step)
        return (
            f"step {step}/{self.num_steps} | loss {loss:.4f} | "
            f"{tokens_per_s:,.0f} tok/s | ETA {_duration(eta)}"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def log_line(text: str) -> None:
    log.info(text)
