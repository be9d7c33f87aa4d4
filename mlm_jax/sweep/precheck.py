"""A sweep's runs checked before the sweep writes or trains anything.

Every point is resolved as its run would resolve it (training/resolve.py: each field, the
cross-section checks), so a bad point stops the sweep at once rather than failing at run time
after sub-workdirs, `sweep_failed.json` and a report exist. All bad points are named together,
each with where to fix it: a key of the sweep, of this command line, or of the config file
(e.g. a shorter `train.num_steps` that leaves the config's `warmup_steps` out of range). A
bucket workdir is asked one question first, with a deadline, so an unreachable one is one line
within seconds instead of a client's retries.
"""

from __future__ import annotations

import math
import re
import threading

from mlm_jax import files
from mlm_jax.sweep import SweepError
from mlm_jax.sweep.run_state import one_line

BUCKET_DEADLINE_S = 10.0  # how long the bucket may take to answer whether the workdir exists

_KEY = re.compile(r"config\.([A-Za-z_][\w.]*)=([^:]*):")  # `config.KEY=VALUE: expected ...`
_INT_RANGE = re.compile(r"expected an integer in (-?\d+)\.\.(-?\d+)")


def check_runs(names, settings, configs, base_args, *, devices_per_run=None) -> None:
    """Resolves every run's config; one SweepError naming every bad run and its fix.

    devices_per_run: the device count each run will see; None for runs that train elsewhere
    (--launch=print and sky): the mesh as written (-1 axes counted as 1), and no check of the
    corpus and tokenizer, which only the machine that trains may see.
    """
    from mlm_jax.training.resolve import resolve
    from mlm_jax.training.synthetic import without_corpus

    overridden = {arg.split("=", 1)[0].removeprefix("--config.") for arg in base_args}
    problems = []
    for name, point, config in zip(names, settings, configs):
        devices = devices_per_run or _devices_named_by(config.mesh)
        if devices_per_run is None:
            config = without_corpus(config)
        try:
            resolve(config, num_devices=devices, local_devices=devices, num_hosts=1)
        except (ValueError, TypeError) as e:
            problems.append(f"{name}: {one_line(e)}{_fix(str(e), point, overridden)}")
    if problems:
        raise SweepError(
            f"{len(problems)} of {len(configs)} runs would stop before training (nothing was "
            "written or trained):\n  " + "\n  ".join(problems)
        )


def _devices_named_by(mesh) -> int:
    return math.prod(max(1, int(mesh[axis])) for axis in ("data", "fsdp", "tensor"))


def _fix(message: str, point: dict, overridden: set[str]) -> str:
    """Where the key a message names was set, and so where to change it."""
    found = _KEY.search(message)
    if not found:
        return ""
    key, value = found.groups()
    if key in point:
        return f" (fix: this point's --sweep value of {key})"
    if key in overridden:
        return f" (fix: --config.{key} on this command line)"
    bounds = _INT_RANGE.search(message)
    if bounds and value.lstrip("-").isdigit() and int(value) > int(bounds.group(2)):
        return (
            f" (fix: lower {key}, e.g. --config.{key}={bounds.group(2)}; {value} comes from the "
            "config, and this command line's other values leave it out of range)"
        )
    return f" (fix: --config.{key}=...; {value} comes from the config)"


def check_reachable(workdir: str, deadline_s: float | None = None) -> None:
    """One SweepError line when a bucket workdir does not answer within the deadline."""
    if not files.is_remote(workdir):
        return
    deadline_s = BUCKET_DEADLINE_S if deadline_s is None else deadline_s
    answer: list = []

    def ask() -> None:
        try:
            answer.append(files.exists(workdir))
        except Exception as e:  # noqa: BLE001 - any client error is the same one line
            answer.append(e)

    # A daemon thread: a client still retrying must not keep the process from exiting.
    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(deadline_s)
    if not answer:
        raise SweepError(
            f"--workdir={workdir}: no answer from the bucket in {deadline_s:.0f} s (network, "
            "credentials: `gcloud auth application-default login`, or the bucket's name?)"
        )
    if isinstance(answer[0], Exception):
        raise SweepError(f"--workdir={workdir}: {type(answer[0]).__name__}: {one_line(answer[0])}")
