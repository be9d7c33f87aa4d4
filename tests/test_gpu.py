"""The GPU-only paths (cuDNN attention, bfloat16 compute) against float32 XLA oracles, and
dropout masks against the CPU's.

Skipped where JAX has no GPU (CI). On a GPU machine:

    JAX_PLATFORMS=cuda,cpu python -m pytest tests/test_gpu.py

(conftest.py defaults JAX_PLATFORMS to cpu, so name cuda explicitly.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax.models.layers import attention_mask, dropout_keep_mask
from mlm_jax.training.loss import mlm_loss
from tests import sharded_worker

pytestmark = pytest.mark.skipif(
    not any(d.platform == "gpu" for d in jax.devices()), reason="needs a GPU"
)


def relative_error(x, reference):
    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(x - reference) / np.linalg.norm(reference)


def attention_inputs(seed, batch=4, length=128, heads=16, head_dim=64):
    """Random q, k, v and a cotangent, plus a packed-rows mask: two documents and padding."""
    rng = np.random.default_rng(seed)
    q, k, v, cotangent = (
        rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32) for _ in range(4)
    )
    document_ids = np.zeros((batch, length), np.int32)
    for row in range(batch):
        end = rng.integers(length // 2, length + 1)
        cut = rng.integers(1, end)
        document_ids[row, :cut], document_ids[row, cut:end] = 1, 2
    mask = attention_mask(None, jnp.asarray(document_ids), pad_id=0, attend_across_documents=False)
    return (q, k, v), cotangent, mask


def attention_and_grads(implementation, dtype, qkv, cotangent, mask):
    def attend(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)

    with jax.default_matmul_precision("highest"):
        args = [jnp.asarray(t, dtype) for t in qkv]
        out, vjp = jax.vjp(attend, *args)
        grads = vjp(jnp.asarray(cotangent, dtype))
    return jax.device_get((out, *grads))


@pytest.mark.parametrize("seed", [0, 1])
def test_cudnn_attention_matches_float32_xla(seed):
    """Output and q/k/v gradients of the fused cuDNN kernel, bf16, vs float32 XLA."""
    qkv, cotangent, mask = attention_inputs(seed)
    reference = attention_and_grads("xla", jnp.float32, qkv, cotangent, mask)
    for implementation in ("cudnn", "xla"):
        got = attention_and_grads(implementation, jnp.bfloat16, qkv, cotangent, mask)
        for name, x, ref in zip(("out", "dq", "dk", "dv"), got, reference):
            assert np.isfinite(np.asarray(x, np.float32)).all(), (implementation, name)
            error = relative_error(x, ref)
            # bf16 operands: ~3 significant digits in, so 1e-3..1e-2 relative error out.
            assert error < 2e-2, (implementation, name, error)


def train_losses(devices, dropout=0.0, **model):
    """Losses of 3 train steps of the small sharding-oracle model (no dropout by default)."""
    run = sharded_worker.run((1, 1, 1), devices=devices, model=model, dropout=dropout)
    return np.array(run["losses"])


def loss_and_grads(devices, **model):
    """MLM loss and parameter gradients of the small model on one fixed packed batch."""
    trainer = sharded_worker.small_trainer((1, 1, 1), devices, model, dropout=0.0)
    params = trainer.new_state().params
    batch = sharded_worker.synthetic_batch(0)
    rng = np.random.default_rng(0)
    positions = np.sort(rng.permuted(np.tile(np.arange(32), (16, 1)), axis=1)[:, :5], axis=1)
    targets = np.take_along_axis(batch["tokens"], positions, axis=1)

    def loss(params):
        logits = trainer.model.apply(
            {"params": params},
            batch["tokens"],
            positions,
            document_ids_BxL=batch["document_ids"],
        )
        return mlm_loss(logits, targets, np.ones_like(targets))[0]

    with trainer.activate():
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])


def test_gpu_gradients_match_a_cpu_float32_run():
    gpu, cpu = jax.devices("gpu")[:1], jax.devices("cpu")[:1]
    oracle_loss, oracle_grads = loss_and_grads(cpu)
    with jax.default_matmul_precision("highest"):
        loss, grads = loss_and_grads(gpu)
    assert abs(loss / oracle_loss - 1) < 1e-5
    assert relative_error(grads, oracle_grads) < 1e-4
    # fused_qkv=False hands cuDNN three matmul outputs instead of slices of one.
    for attention, fused_qkv in (("xla", True), ("cudnn", True), ("cudnn", False)):
        loss, grads = loss_and_grads(
            gpu, dtype="bfloat16", attention=attention, fused_qkv=fused_qkv
        )
        assert abs(loss / oracle_loss - 1) < 5e-3, (attention, fused_qkv)
        assert relative_error(grads, oracle_grads) < 3e-2, (attention, fused_qkv)


def test_gpu_train_steps_match_a_cpu_float32_run():
    """The whole step (masking, forward, backward, AdamW) on the GPU vs the CPU as oracle."""
    gpu, cpu = jax.devices("gpu")[:1], jax.devices("cpu")[:1]
    oracle = train_losses(cpu)
    with jax.default_matmul_precision("highest"):
        float32 = train_losses(gpu)
    np.testing.assert_allclose(float32, oracle, rtol=1e-4)
    for attention in ("xla", "cudnn"):
        bfloat16 = train_losses(gpu, dtype="bfloat16", attention=attention)
        np.testing.assert_allclose(bfloat16, oracle, rtol=5e-3, err_msg=attention)


def test_dropout_masks_are_the_same_bits_on_gpu_and_cpu():
    """Threefry is integer arithmetic, so a seeded run drops the same units on either backend:
    the masks are equal bit for bit, and float32 training with dropout matches the CPU run."""
    gpu, cpu = jax.devices("gpu")[0], jax.devices("cpu")[0]
    for shape in [(4, 128, 1024), (4, 16, 128, 128), (3, 7)]:  # (3, 7): the fallback path
        draw = jax.jit(lambda key, shape=shape: dropout_keep_mask(key, shape, 0.1)[0])
        masks = [draw(jax.device_put(jax.random.key(3), d)) for d in (gpu, cpu)]  # runs on d
        np.testing.assert_array_equal(*jax.device_get(masks), err_msg=str(shape))
    oracle = train_losses([cpu], dropout=0.1)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(train_losses([gpu], dropout=0.1), oracle, rtol=1e-4)
