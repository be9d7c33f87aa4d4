"""experiments/benchmark.py: runs end to end on a tiny shape and prints one well-formed JSON line.

No timing assertions (the CPU is shared); the numbers checked are the ones fixed by arithmetic:
the FLOPs formula against a count by hand, the relations between the printed fields, and the
fast dropout mask against binomial statistics.
"""

import gzip
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "benchmark.py")
TINY = [
    "--config=" + os.path.join(ROOT, "configs", "tiny.py"),
    "--config.model.num_layers=2",
    "--config.model.hidden_size=32",
    "--config.model.num_heads=2",
    "--config.model.intermediate_size=64",
    "--config.data.vocab_size=300",
    "--config.data.seq_len=32",
    "--config.train.batch_size=4",
]


def _run(*args):
    done = subprocess.run(
        [sys.executable, SCRIPT, *TINY, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0]), done.stdout


@pytest.mark.slow
def test_train_step_line_has_the_fields_and_consistent_numbers():
    result, stdout = _run("--steps=2", "--warmup=1", "--peak_size=256", "--peak_runs=1")
    assert result["bench"] == "train_step"
    for key in (
        "tokens_per_s",
        "step_s",
        "flops_per_token",
        "achieved_tflops",
        "peak_matmul_tflops",
        "mfu",
        "compile_s",
        "mask_s",
        "peak_memory_gib",
        "peak_memory_kind",
    ):
        assert key in result, key
    assert (result["layers"], result["hidden"], result["vocab"]) == (2, 32, 300)
    tokens = 4 * 32
    assert result["tokens_per_s"] == pytest.approx(tokens / result["step_s"], rel=1e-9)
    achieved = result["flops_per_token"] * tokens / result["step_s"]
    assert result["achieved_tflops"] * 1e12 == pytest.approx(achieved, rel=1e-9)
    assert result["mfu"] == pytest.approx(
        result["achieved_tflops"] / result["peak_matmul_tflops"], rel=1e-9
    )
    # Hand count: E=32, M=64, 2 layers, L=32, V=300, K=max_predictions.
    k = result["max_predictions"]
    expected = (
        6 * 2 * (4 * 32 * 32 + 2 * 32 * 64) + 12 * 2 * 32 * 32 + 6 * (32 * 32 + 32 * 300) * k / 32
    )
    assert result["flops_per_token"] == pytest.approx(expected, rel=1e-12)
    assert 0 < k <= 32
    assert result["peak_memory_kind"] == "host max RSS (process)"  # CPU: no device stats
    assert result["mfu_datasheet"] is None  # float32 on CPU: no datasheet entry
    assert result["loss"] == result["loss"]  # a number, not NaN
    assert "MFU" in stdout and "tokens/s" in stdout  # the table follows the JSON line


@pytest.mark.slow
def test_compile_scaling_reports_both_depths():
    result, _ = _run("--compile_scaling", "--config.model.num_layers=4")
    assert result["bench"] == "compile_scaling"
    assert set(result["compile_s"]) == {"2_layers", "4_layers"}
    assert all(v > 0 for v in result["compile_s"].values())


def test_unknown_override_fails():
    done = subprocess.run(
        [sys.executable, SCRIPT, *TINY, "--config.model.no_such_key=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no_such_key" in done.stderr


def test_synthetic_steps_do_not_check_a_corpus_they_never_read(tmp_path):
    """configs/bert.py:base names a Wikipedia build this machine lacks (once a ConfigError that
    stopped the README's benchmark row); synthetic ids need only the vocabulary size."""
    from mlm_jax.training.synthetic import make_trainer
    from tests.configs import small_run_config

    config = small_run_config(str(tmp_path))
    config.data.dataset = "tfds:no_such_dataset/1.0.0"
    config.data.tokenizer = str(tmp_path / "no_such_vocab.txt")
    config.model.vocab_size = 300
    trainer = make_trainer(config)
    assert trainer.run.model.vocab_size == 300
    assert not any(tmp_path.iterdir())  # nothing built or written


def test_fast_dropout_mask_has_the_rate_and_independent_quarters():
    """model.dropout_keep_mask (the speed change: four 16-bit draws per Threefry hash) against
    binomial statistics: keep rate 1 - p, the four draws of one hash independent, and the
    fallback paths (last dim not divisible by 4, a non-Threefry key) at the same rate."""
    import jax
    import numpy as np

    from mlm_jax.models.layers import dropout_keep_mask

    def assert_rate(keep, p):  # 5 binomial standard deviations (~3e-4 here)
        assert abs(keep.mean() - p) < 5 * (p * (1 - p) / keep.size) ** 0.5

    n_rows, width = 1000, 1024  # 1,024,000 draws
    keep, keep_prob = dropout_keep_mask(jax.random.key(0), (n_rows, width), 0.1)
    keep = np.asarray(keep)
    assert keep_prob == pytest.approx(0.9, abs=1e-5)
    assert_rate(keep, 0.9)
    quads = keep.reshape(n_rows, width // 4, 4)  # the four draws of each hash
    for i, j in [(0, 1), (0, 2), (1, 3), (2, 3)]:  # within a word and across the two words
        assert_rate(quads[..., i] & quads[..., j], 0.81)
    assert_rate(quads.all(axis=-1), 0.9**4)
    assert (keep[0] == keep[1]).mean() < 0.95  # different rows are not copies of each other
    other_key = dropout_keep_mask(jax.random.key(1), (n_rows, width), 0.1)[0]
    assert (np.asarray(other_key) == keep).mean() < 0.95
    odd, _ = dropout_keep_mask(jax.random.key(1), (999, 7), 0.1)  # last dim: fallback path
    assert_rate(np.asarray(odd), 0.9)
    rbg, _ = dropout_keep_mask(jax.random.key(2, impl="rbg"), (999, 8), 0.1)
    assert_rate(np.asarray(rbg), 0.9)
    raw, _ = dropout_keep_mask(jax.random.PRNGKey(0), (n_rows, width), 0.1)  # legacy uint32 key
    np.testing.assert_array_equal(np.asarray(raw), keep)


def test_profile_summary_splits_device_time_by_kind(tmp_path):
    """A hand-made trace: two steps of known kernels on a device, plus host events it skips."""
    from experiments import profile_summary

    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]
    kernels = [  # (name, microseconds) per step
        ("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT", 600),
        ("gemm_fusion_dot_13", 200),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 100),
        ("memcpy128", 50),
        ("loop_xor_fusion_1", 30),
        ("loop_multiply_fusion", 20),
    ]
    events, ts = list(meta), 0
    for _ in range(2):
        for name, dur in kernels:
            events.append({"ph": "X", "pid": 1, "tid": 2, "ts": ts, "dur": dur, "name": name})
            events.append({"ph": "X", "pid": 7, "tid": 3, "ts": ts, "dur": 999, "name": "host"})
            ts += dur
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)

    table = profile_summary.summarize(profile_summary.device_kernels(str(path)), 2, top=3)
    rows = {line[:26].strip(): line[26:].split() for line in table.splitlines()[3:8]}
    assert rows["matmul"] == ["0.80", "80.0%"]
    assert rows["attention (cuDNN)"] == ["0.10", "10.0%"]
    assert rows["copies"] == ["0.05", "5.0%"]
    assert rows["random bits (threefry)"] == ["0.03", "3.0%"]
    assert rows["other XLA fusions"] == ["0.02", "2.0%"]
    assert table.startswith("2 step(s) traced: 1.0 ms of kernels per step")
    assert profile_summary.find_trace(str(tmp_path)) == str(path)


def test_gpu_estimate_counts_loop_trips_and_reads_one_slice_of_a_stack(tmp_path):
    """The roofline's bookkeeping, on a CPU-compiled scan (no GPU compiler needed for this)."""
    import jax
    import jax.numpy as jnp

    from experiments import gpu_estimate

    def ten_steps(carry_NxN, stack_10xNxN):
        return jax.lax.scan(lambda c, s: (c * 2.0 + s, None), carry_NxN, stack_10xNxN)[0]

    n = 1024
    hlo = jax.jit(ten_steps).lower(jnp.ones((n, n)), jnp.ones((10, n, n))).compile().as_text()
    by_kind, kernels = gpu_estimate.estimate(hlo)
    step = max(k for k in kernels if k[1] == 10 and k[2] == "other fusions")
    # Per trip: read the carry and one [N,N] slice of the stack (not all ten), write the carry.
    moved = (step[0] / 10 - gpu_estimate.LAUNCH_S) * gpu_estimate.HBM_BYTES
    assert moved == pytest.approx(3 * 4 * n * n, rel=0.01)
    assert sum(by_kind.values()) == pytest.approx(sum(k[0] for k in kernels))

    dump = tmp_path / "step.txt"
    dump.write_text(hlo)
    script = os.path.join(ROOT, "experiments", "gpu_estimate.py")
    done = subprocess.run(
        [sys.executable, script, f"--hlo={dump}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("estimated H100 step ")


def test_gpu_estimate_prices_the_cublas_and_cudnn_calls_of_an_h100_module():
    """tests/data/h100_matmul_attention.hlo.txt: XLA's H100 HLO of, compiled deviceless as
    gpu_estimate.py compiles (with jax[cuda12]==0.10.2),

        def step(x, w, q, k, v, a, b):  # x [256,512], w [512,1024], q k v [2,128,4,64]: bf16
            attention = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
            return x @ w, attention, a @ b  # a [64,128], b [128,256]: float32 (TF32)
    """
    from experiments import gpu_estimate

    with open(os.path.join(ROOT, "tests", "data", "h100_matmul_attention.hlo.txt")) as f:
        by_kind, kernels = gpu_estimate.estimate(f.read())
    matmul_s = 2 * 256 * 1024 * 512 / gpu_estimate.GEMM_FLOPS + gpu_estimate.LAUNCH_S
    matmul_s += 2 * 64 * 256 * 128 / gpu_estimate.TF32_FLOPS + gpu_estimate.LAUNCH_S
    attention_s = 4 * 2 * 4 * 128 * 128 * 64 / gpu_estimate.ATTENTION_FLOPS["forward"]
    assert by_kind["matmuls"] == pytest.approx(matmul_s)
    assert by_kind["cuDNN attention"] == pytest.approx(attention_s)
    assert len(kernels) == 3


def test_gpu_estimate_prices_a_float32_gemm_fusion_at_the_tf32_rate():
    """A Triton gemm fusion (what autotuning on a real GPU picks) with float32 operands runs
    as TF32, at TF32_FLOPS; the same fusion in bfloat16 at GEMM_FLOPS. Hand-written HLO."""
    from experiments import gpu_estimate

    n = 2048  # large enough that the FLOPs, not the bytes, bound both

    def module(dtype):
        t = f"{dtype}[{n},{n}]"
        return f"""HloModule m

%gemm (p0: {t}, p1: {t}) -> {t} {{
  %p0 = {t}{{1,0}} parameter(0)
  %p1 = {t}{{1,0}} parameter(1)
  ROOT %d = {t}{{1,0}} dot(%p0, %p1), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
}}

ENTRY %main (a: {t}, b: {t}) -> {t} {{
  %a = {t}{{1,0}} parameter(0)
  %b = {t}{{1,0}} parameter(1)
  ROOT %f = {t}{{1,0}} fusion(%a, %b), kind=kCustom, calls=%gemm
}}
"""

    flops = 2.0 * n**3
    for dtype, rate in (("f32", gpu_estimate.TF32_FLOPS), ("bf16", gpu_estimate.GEMM_FLOPS)):
        by_kind, _ = gpu_estimate.estimate(module(dtype))
        assert by_kind == {"matmuls": pytest.approx(flops / rate + gpu_estimate.LAUNCH_S)}, dtype


def test_datasheet_peak_tells_the_h100_variants_apart():
    """NVIDIA's bf16 dense figures: SXM 989, PCIe 756, NVL 835 TFLOP/s (device_kind strings as
    JAX reports them)."""
    from mlm_jax.models import flops

    assert flops.datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert flops.datasheet_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert flops.datasheet_peak("NVIDIA H100 NVL", "bfloat16") == 835e12
    assert flops.datasheet_peak("NVIDIA H100 PCIe", "float32") is None


def test_profile_summary_reads_a_cpu_trace_and_names_each_op_s_module(tmp_path):
    """A CPU trace: ops on XLA's threads (runtime events skipped, an empty device process
    ignored), and the HLO's op_name metadata giving each op to its module, layers merged."""
    from experiments import profile_summary

    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:CUSTOM:x"}},
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 7, "tid": 3, "name": "thread_name", "args": {"name": "tf_XLAEigen/1"}},
        {"ph": "M", "pid": 7, "tid": 4, "name": "thread_name", "args": {"name": "main"}},
    ]
    ops = [("ynn_fusion.3", 600), ("ynn_fusion.4", 200), ("copy_bitcast_fusion.1", 150)]
    ops += [("add_fusion", 50), ("ThunkExecutor::Execute", 5000), ("end: add_fusion", 0)]
    events = list(meta)
    for _ in range(2):
        for name, dur in ops:
            events.append({"ph": "X", "pid": 7, "tid": 3, "ts": 0, "dur": dur, "name": name})
        events.append({"ph": "X", "pid": 7, "tid": 4, "ts": 0, "dur": 999, "name": "python"})
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    hlo = "\n".join(
        [
            '  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%a), metadata={op_name="jit(train_step)/'
            'transpose(jvp(BertMLM))/encoder/layer_3/mlp_in/dot_general" stack_frame_id=1}',
            '  %ynn_fusion.4 = f32[8,4]{1,0} fusion(%a), metadata={op_name="jit(train_step)/'
            'jvp(BertMLM)/encoder/layer_0/mlp_in/jvp(BertMLM)/encoder/layer_0/mlp_in/dot_general"}',
            '  %add_fusion = f32[] fusion(%b), metadata={op_name="jit(train_step)/jvp()/add"}',
        ]
    )

    kernels = profile_summary.device_kernels(str(path))
    table = profile_summary.summarize(kernels, 2, top=3)
    rows = {line[:26].strip(): line[26:].split() for line in table.splitlines()[3:6]}
    assert rows["matmul"] == ["0.80", "80.0%"]
    assert rows["copies"] == ["0.15", "15.0%"]
    assert rows["other XLA fusions"] == ["0.05", "5.0%"]
    by_source = profile_summary.by_source(kernels, 2, profile_summary.sources(hlo), top=5)
    assert "0.60   60.0%  backward encoder/layer_*/mlp_in" in by_source
    assert "0.20   20.0%  forward encoder/layer_*/mlp_in" in by_source
    assert "0.15   15.0%  (no metadata)" in by_source
    assert "0.05    5.0%  forward step" in by_source
