"""Train-step throughput and MFU, measured side by side with the matmul peak of the same devices.

    python experiments/benchmark.py --config=configs/bert.py:base \\
        --config.model.dtype=float32 --config.train.batch_size=8
    python experiments/benchmark.py --config=configs/bert.py:large --compile_scaling

Runs the real jitted train step (mlm_jax.training.trainer.Trainer: masking, forward, backward, AdamW,
donated state) on synthetic token ids of the config's vocabulary (mlm_jax.training.synthetic:
config.model.vocab_size, or data.vocab_size when that is 0; no corpus, no tokenizer). Compile
and --warmup steps are excluded; the step time is the median of --steps timed steps, each
blocked until ready.

Model FLOPs per token are mlm_jax.models.flops.flops_per_token (its docstring has the formula: the
FLOPs the objective needs, 6 x parameters per token for the matmuls, plus attention and the
MLM head at the prediction slots only).

The peak is measured in the same run: the median over bursts of [N, N] @ [N, N] matmuls of
random operands in the compute dtype, one per device of the mesh at once, dispatched back to back
with one sync per burst (so launch and sync latency stay out of it), timed between the train
steps (so both see the same load on a shared machine). MFU = achieved model FLOP/s / that peak
(and, on GPU/TPU, also / the datasheet peak of the detected device for bfloat16).

The 2-core CPU this was written on is shared: MFU is a ratio of two numbers measured in the
same run, so it is far steadier under load than tokens/s. Repeat with --repeats to see spread.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.timing import median_seconds, timed
from mlm_jax import cli, masking
from mlm_jax.models.flops import datasheet_peak, flops_per_token
from mlm_jax.training.synthetic import (
    compile_train_step,
    make_trainer,
    synthetic_batch,
    vocab_size_of,
)
from mlm_jax.training.trainer import stream_key

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<exp>.py[:arg]).", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
_PEAK_SIZE = flags.DEFINE_integer(
    "peak_size", 0, "N of the N x N peak matmul; 0 = 4096 on CPU, 8192 on GPU/TPU."
)
_PEAK_RUNS = flags.DEFINE_integer(
    "peak_runs", 2, "Timed peak bursts after each timed step (the median of all is used)."
)
_PEAK_BURST = flags.DEFINE_integer(
    "peak_burst",
    0,
    "Matmuls dispatched back to back per timed peak burst, one sync at the end; 0 = 1 on CPU, "
    "10 on GPU/TPU (one 8192^2 matmul there takes ~1.4 ms, too short to time alone).",
)
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir",
    "",
    "If set, trace 2 more steps after the timed ones with jax.profiler into this folder: "
    "a Perfetto trace (perfetto_trace.json.gz, for ui.perfetto.dev and "
    "experiments/profile_summary.py), an xplane for TensorBoard, and the step's optimized HLO "
    "(train_step.hlo.txt, whose op names the trace's CPU ops carry).",
)
_COMPILE_SCALING = flags.DEFINE_bool(
    "compile_scaling",
    False,
    "Only compile the train step at the config's depth and at 2 layers and print both times "
    "(with model.scan_layers they should be about equal).",
)
_ALL_GLOBAL = flags.DEFINE_bool(
    "all_global",
    False,
    "model.arch=modernbert: time the same step again with every layer global "
    "(model.global_every=1) in this run, and report the sliding window's saving.",
)
_DATA_BATCHES = flags.DEFINE_integer(
    "data_batches",
    0,
    "If > 0, also run experiments/bench_data.py (configs/tiny.py, python_docs) for this many "
    "batches and report the loader's tokens/s (builds the corpus: ~1 min on 2 cores).",
)


def peak_matmul(devices, dtype, size: int, burst: int):
    """`burst` jitted [size,size] @ [size,size] per device, all devices at once, and their FLOPs."""
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    shape = (len(devices), size, size)
    # Random operands: constant ones let the chip draw less power and clock higher (seen ~13%
    # faster on zeros on an H200), which would overstate the peak.
    key_a, key_b = jax.random.split(jax.random.key(0))
    make = jax.jit(lambda key: jax.random.normal(key, shape, dtype), out_shardings=sharded)
    a, b = make(key_a), make(key_b)
    matmul = jax.jit(lambda x, y: jnp.einsum("dij,djk->dik", x, y), out_shardings=sharded)
    jax.block_until_ready(matmul(a, b))  # compile
    return (lambda: [matmul(a, b) for _ in range(burst)]), 2.0 * burst * len(devices) * size**3


def memory_report(devices) -> dict:
    """Peak device memory where the backend reports it, else this process's host max RSS."""
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        peak = max(d.memory_stats()["peak_bytes_in_use"] for d in devices)
        return {"peak_memory_gib": peak / 2**30, "peak_memory_kind": "device peak_bytes_in_use"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_gib": rss_kib / 2**20, "peak_memory_kind": "host max RSS (process)"}


def compile_seconds(config) -> float:
    return compile_train_step(config)[2]


def run_compile_scaling(config) -> dict:
    deep = int(config.model.num_layers)
    seconds = {deep: compile_seconds(config)}
    shallow = config.copy_and_resolve_references()
    shallow.model.num_layers = 2
    seconds[2] = compile_seconds(shallow)
    return {
        "bench": "compile_scaling",
        "scan_layers": bool(config.model.scan_layers),
        "compile_s": {f"{k}_layers": round(v, 2) for k, v in sorted(seconds.items())},
        "ratio_deep_over_2": round(seconds[deep] / seconds[2], 3),
    }


def masking_seconds(trainer, batch, runs: int) -> float:
    """mask_tokens alone on the step's batch, exactly as train_step calls it."""
    run, spec = trainer.run, trainer.run.masking

    @jax.jit
    def mask(batch, step):
        keys = masking.masking_keys(
            stream_key(run.seed, 2), step, batch["example_ids"], batch["epochs"], spec.static_epochs
        )
        ratio = masking.ratio_at_step(step, spec)
        return masking.mask_tokens(
            keys,
            batch["tokens"],
            batch["maskable"],
            batch["word_starts"],
            ratio=ratio,
            spec=spec,
        )

    return median_seconds(lambda: mask(batch, jnp.int32(0)), runs)


def loader_tokens_per_s(batches: int) -> float | None:
    """Runs experiments/bench_data.py and reads its steady-state loader tokens/s."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_data.py")
    out = subprocess.run(
        [sys.executable, script, f"--batches={batches}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("loader:"):
            return float(line.split("=")[1].split("tokens/s")[0].replace(",", ""))
    return None


def _timed_steps(trainer, state, batch, peak_fn):
    """Compiles the train step, then times it and the peak matmul alternately (both see the
    same load on a shared machine); a profile of two more steps if asked. Returns the step
    times, the peak times, the compile seconds, the last loss and the seconds of masking."""
    with trainer.activate():
        start = time.perf_counter()
        step_fn = trainer.jitted("train").lower(state, batch, trainer.tables).compile()
        compile_s = time.perf_counter() - start
        for _ in range(_WARMUP.value):
            state, metrics = step_fn(state, batch, trainer.tables)
        jax.block_until_ready(state)
        times, peak_times = [], [timed(peak_fn)]
        for _ in range(_STEPS.value):
            start = time.perf_counter()
            state, metrics = step_fn(state, batch, trainer.tables)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
            peak_times += [timed(peak_fn) for _ in range(_PEAK_RUNS.value)]
        loss = float(metrics["loss"])
        if _PROFILE_DIR.value:
            os.makedirs(_PROFILE_DIR.value, exist_ok=True)  # the HLO names the trace's ops
            with open(os.path.join(_PROFILE_DIR.value, "train_step.hlo.txt"), "w") as f:
                f.write(step_fn.as_text())
            with jax.profiler.trace(_PROFILE_DIR.value, create_perfetto_trace=True):
                for _ in range(2):
                    state, metrics = step_fn(state, batch, trainer.tables)
                jax.block_until_ready((state, metrics))
        mask_s = masking_seconds(trainer, batch, runs=5)
    return times, peak_times, compile_s, loss, mask_s


def _what_ran(config, trainer, vocab_size: int) -> dict:
    """The row's description: the model, masking and step settings that were timed."""
    model = trainer.run.model
    return {
        "dtype": config.model.dtype,
        "arch": model.arch,
        "local_window": model.local_window if model.has_local_layers else 0,
        "layers": model.num_layers,
        "hidden": model.hidden_size,
        "vocab": vocab_size,
        "batch_size": int(config.train.batch_size),
        "seq_len": int(config.data.seq_len),
        "max_predictions": trainer.run.masking.max_predictions,
        "dropout": config.model.dropout_rate,
        "attention_dropout": config.model.attention_dropout_rate,
        "attention": config.model.attention,
        "gelu": config.model.gelu,
        "remat": config.model.remat,
        "scan_layers": bool(config.model.scan_layers),
    }


def run_benchmark(config) -> dict:
    vocab_size = vocab_size_of(config)
    trainer = make_trainer(config)
    devices = list(trainer.mesh.devices.flat)
    batch_size, seq_len = int(config.train.batch_size), int(config.data.seq_len)
    batch = trainer.global_batch(synthetic_batch(batch_size, seq_len, vocab_size))
    platform = devices[0].platform
    size = _PEAK_SIZE.value or (4096 if platform == "cpu" else 8192)
    burst = _PEAK_BURST.value or (1 if platform == "cpu" else 10)
    peak_fn, peak_flops = peak_matmul(devices, trainer.run.model.compute_dtype, size, burst)
    times, peak_times, compile_s, loss, mask_s = _timed_steps(
        trainer, trainer.new_state(), batch, peak_fn
    )

    step_s = statistics.median(times)
    tokens = batch_size * seq_len
    flops = flops_per_token(trainer.run.model, seq_len, trainer.run.masking.max_predictions)
    achieved = flops["total"] * tokens / step_s
    peak = peak_flops / statistics.median(peak_times)
    sheet = datasheet_peak(devices[0].device_kind, config.model.dtype)
    sheet = sheet * len(devices) if sheet else None
    result = {
        "bench": "train_step",
        "device": f"{len(devices)} x {devices[0].device_kind} ({platform})",
        **_what_ran(config, trainer, vocab_size),
        "steps": _STEPS.value,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "tokens_per_s": tokens / step_s,
        "flops_per_token": flops["total"],
        "flops_per_token_parts": {k: v for k, v in flops.items() if k != "total"},
        "achieved_tflops": achieved / 1e12,
        "peak_matmul_tflops": peak / 1e12,
        "peak_matmul_size": size,
        "peak_matmul_burst": burst,
        "mfu": achieved / peak,
        "datasheet_tflops": sheet / 1e12 if sheet else None,
        "mfu_datasheet": achieved / sheet if sheet else None,
        "compile_s": compile_s,
        "mask_s": mask_s,
        "mask_over_step": mask_s / step_s,
        "loss": loss,
    }
    result.update(memory_report(devices))
    if _DATA_BATCHES.value > 0:
        loader = loader_tokens_per_s(_DATA_BATCHES.value)
        result["loader_tokens_per_s"] = loader
        result["loader_s_per_step"] = tokens / loader if loader else None
    return result


def print_table(result: dict) -> None:
    if result["bench"] == "compile_scaling":
        for k, v in result["compile_s"].items():
            print(f"  compile {k:<12} {v:8.2f} s")
        return
    rows = [
        ("device", result["device"]),
        (
            "shape",
            f"{result['layers']} layers x {result['hidden']}, "
            f"batch {result['batch_size']} x seq {result['seq_len']}, {result['dtype']}",
        ),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}"),
        ("step time", f"{result['step_s'] * 1e3:,.1f} ms (median of {result['steps']})"),
        ("model FLOPs/token", f"{result['flops_per_token'] / 1e6:,.1f} M"),
        ("achieved", f"{result['achieved_tflops']:.3f} TFLOP/s"),
        (
            "matmul peak",
            f"{result['peak_matmul_tflops']:.3f} TFLOP/s "
            f"({result['peak_matmul_burst']} x {result['peak_matmul_size']}^2 matmuls per timing, "
            "between the steps)",
        ),
        ("MFU", f"{100 * result['mfu']:.1f} % of measured peak"),
    ]
    if result["mfu_datasheet"] is not None:
        rows.append(
            (
                "MFU (datasheet)",
                f"{100 * result['mfu_datasheet']:.1f} % of "
                f"{result['datasheet_tflops']:.0f} TFLOP/s",
            )
        )
    rows += [
        ("peak memory", f"{result['peak_memory_gib']:.2f} GiB ({result['peak_memory_kind']})"),
        ("compile", f"{result['compile_s']:.1f} s"),
        (
            "masking alone",
            f"{result['mask_s'] * 1e3:.2f} ms ({100 * result['mask_over_step']:.3g} % of the step)",
        ),
    ]
    if "loader_tokens_per_s" in result:
        rows.append(
            (
                "loader",
                f"{result['loader_tokens_per_s']:,.0f} tokens/s "
                f"({result['loader_s_per_step'] * 1e3:.2f} ms per step's batch)",
            )
        )
    for name, value in rows:
        print(f"  {name:<18} {value}")


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    if _COMPILE_SCALING.value:
        result = run_compile_scaling(config)
    else:
        result = run_benchmark(config)
        if _ALL_GLOBAL.value:
            result["all_global"] = all_global_comparison(config, result)
    print(json.dumps(result), flush=True)
    print_table(result)
    if "all_global" in result:
        g = result["all_global"]
        print(
            f"  all layers global  {g['step_s'] * 1e3:,.1f} ms a step, MFU "
            f"{100 * g['mfu']:.1f} %: the window saves {100 * g['window_saving']:.1f} % of it"
        )


def all_global_comparison(config, windowed: dict) -> dict:
    """The same step with model.global_every=1, timed right after the windowed one."""
    if config.model.arch != "modernbert":
        raise ValueError("--all_global: needs --config.model.arch=modernbert")
    import copy

    config = copy.deepcopy(config)
    config.model.global_every = 1
    result = run_benchmark(config)
    keep = ("step_s", "tokens_per_s", "flops_per_token", "mfu", "peak_matmul_tflops", "compile_s")
    out = {k: result[k] for k in keep}
    out["window_saving"] = 1.0 - windowed["step_s"] / result["step_s"]
    return out


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))
