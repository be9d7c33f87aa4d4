"""The TPU estimate's pieces: slice names, XLA's refusals, collectives, loop trips, and the
FLOPs of the convolutions TPU's compiler writes dots as (against 2·B·M·N·K by hand)."""

import pytest

from mlm_jax.estimate import chips, memory, roofline
from mlm_jax.estimate.tpu import libtpu_installed
from mlm_jax.estimate.tpu_roofline import group_size, tpu_kernel_seconds

needs_libtpu = pytest.mark.skipif(not libtpu_installed(), reason="libtpu not installed")


def test_slice_names_give_chip_and_count_or_say_what_is_expected():
    assert chips.parse_topology("v5e:4x4") == (chips.CHIPS["v5e"], 16)
    assert chips.parse_topology("v4:2x2x1") == (chips.CHIPS["v4"], 4)
    assert chips.hosts_of(chips.CHIPS["v5e"], 16) == 2  # v5e-16: two 8-chip hosts
    with pytest.raises(ValueError, match="expected GENERATION:SHAPE"):
        chips.parse_topology("v5litepod-16")


def test_xla_refusals_read_as_needed_and_available_bytes():
    gib = 2**30
    for text, used in (
        ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (112.37G) exceeds available HBM (15.75G).", 112.37),
        ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
         "space hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.", 20.5),
    ):  # fmt: skip
        refusal = memory.does_not_fit(RuntimeError(text))
        assert refusal.used == pytest.approx(used * gib, rel=1e-6)
        assert refusal.capacity == pytest.approx(15.75 * gib, rel=1e-6)
    assert memory.does_not_fit(RuntimeError("INVALID_ARGUMENT: bad sharding")) is None
    assert memory.fit_line(17 * gib, 16 * gib).startswith("does not fit: 17.00 GiB per chip, 1.00")
    assert memory.fit_line(4 * gib, 16 * gib).startswith("fits: 4.00 of 16.00 GiB")


def test_collective_groups_in_each_form_xla_prints():
    mesh = "replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}, to_apply=%add"
    assert group_size(mesh, 8) == 2
    assert group_size("replica_groups=[2,4]<=[8], to_apply=%add", 8) == 4
    assert group_size("replica_groups={{0,1,2},{3,4,5}}, to_apply=%add", 6) == 3
    assert group_size("to_apply=%add", 8) == 8


_LOOP = """HloModule m

%cond (p: (s32[], f32[1024])) -> pred[] {
  %p = (s32[], f32[1024]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %p = (s32[], f32[1024]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[1024] get-tuple-element(%p), index=1
  %s = f32[1024] all-reduce(%x), replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %t = (s32[], f32[1024]) tuple(%i, %s)
}

ENTRY %main (a: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %a = (s32[], f32[1024]) parameter(0)
  ROOT %w = (s32[], f32[1024]) while(%a), condition=%cond, body=%body
}
"""


def test_a_loop_counts_its_trips_from_its_condition_and_an_all_reduce_its_ring_bytes():
    """A TPU while loop carries no known_trip_count: `i < 12` gives 12. An all-reduce of 4 KiB
    over 4 chips sends 2·3/4 of it per chip."""
    rates = roofline.Rates(matmul_flops=1e12, hbm_bytes=1e12)
    ici = 1e9
    by_kind, kernels = roofline.estimate(_LOOP, tpu_kernel_seconds(rates, ici, 4))
    assert kernels[0][1] == 12
    assert by_kind == {"collectives (ICI)": pytest.approx(12 * 2 * 3 / 4 * 4096 / ici)}


@needs_libtpu
def test_batched_dot_compiled_for_a_v5e_counts_its_flops_exactly():
    """XLA's TPU compiler writes a batched dot as a convolution whose batch dimension is a
    padded window; counting only the taps on real elements gives 2·B·M·N·K."""
    import jax
    import jax.numpy as jnp

    from mlm_jax.estimate.tpu import tpu_slice

    tpu = tpu_slice("v5e:2x2")
    b, m, k, n = 8, 256, 512, 384
    mesh = jax.sharding.Mesh(tpu.devices, ("chips",))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # on every chip
    x = jax.ShapeDtypeStruct((b, m, k), jnp.bfloat16, sharding=whole)
    y = jax.ShapeDtypeStruct((b, k, n), jnp.bfloat16, sharding=whole)
    hlo = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y)).lower(x, y).compile().as_text()
    rates = roofline.Rates(matmul_flops=1.0, hbm_bytes=float("inf"))
    by_kind, _ = roofline.estimate(hlo, tpu_kernel_seconds(rates, 1.0, 1))
    assert by_kind["matmuls"] == 2 * b * m * n * k


@pytest.mark.parametrize("limit", [4, 5, 17, 64, 1000, 4097])
@pytest.mark.parametrize("guess_off", [-5, 0, 1, 9])
def test_largest_batch_search_finds_the_last_fitting_multiple_from_any_guess(limit, guess_off):
    """Against brute force: the largest multiple of step <= limit."""
    from mlm_jax.estimate import tpu_step

    step = 2
    expected = limit // step * step  # (the search starts from 2 steps, known to fit)
    probes = []

    def fits(rows):
        probes.append(rows)
        return rows <= limit

    guess = max(2 * step, expected + guess_off * step)
    assert tpu_step._search(fits, 2 * step, guess, step) == expected
    if guess_off == 0:
        assert len(probes) <= 2  # a right guess costs two compiles


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tpu_topology=v5e:2x2"], "error: --tpu_topology: only with --print_config"),
        (["--print_config", "--tpu_topology=v5e-8"], "error: 'v5e-8': expected GENERATION:SHAPE"),
    ],
)
def test_a_tpu_topology_flag_it_cannot_use_is_one_error_line(args, message):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "mlm_jax.main", "--config=configs/tiny.py", *args],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-1000:]
    assert done.stderr.startswith(message), done.stderr[-1000:]


_NESTED = """HloModule m

%inner (s: f32[12,256,256], i: s32[]) -> f32[256,256] {
  %s = f32[12,256,256] parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  %d = f32[1,256,256] dynamic-slice(%s, %i, %z, %z), dynamic_slice_sizes={1,256,256}
  ROOT %b = f32[256,256] bitcast(%d)
}

%outer (s: f32[12,256,256], i: s32[]) -> f32[256,256] {
  %s = f32[12,256,256] parameter(0)
  %i = s32[] parameter(1)
  %f = f32[256,256] fusion(%s, %i), kind=kLoop, calls=%inner
  ROOT %e = f32[256,256] exponential(%f)
}

ENTRY %main (stack: f32[12,256,256], i: s32[]) -> f32[256,256] {
  %stack = f32[12,256,256] parameter(0)
  %i = s32[] parameter(1)
  ROOT %o = f32[256,256] fusion(%stack, %i), kind=kLoop, calls=%outer
}
"""


def test_a_stack_sliced_inside_a_nested_fusion_costs_one_slice():
    """TPU's fusions hand a scan's stacked residuals to a nested fusion that slices one
    layer out: the bytes read are that layer's (256·256·4), not the stack's 12 times more."""
    rates = roofline.Rates(matmul_flops=1e12, hbm_bytes=1e12)
    by_kind, _ = roofline.estimate(_NESTED, tpu_kernel_seconds(rates, 1e9, 1))
    one_layer = 256 * 256 * 4
    assert by_kind["other fusions"] == pytest.approx((one_layer + 4 + one_layer) / 1e12)


@needs_libtpu
def test_a_v4_slice_has_one_device_a_chip_as_a_v4_vm_runs_it():
    """v4-8 is 4 chips of 2 TensorCores each, which a TPU VM runs as 4 megacore devices."""
    from mlm_jax.estimate.tpu import tpu_slice

    tpu = tpu_slice("v4:2x2x1")
    assert tpu.num_chips == 4
    assert {d.core_on_chip for d in tpu.devices} == {0}
