"""models/layers.py and models/head.py, the pieces every family shares, against numpy written
out here."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mlm_jax.models import head as mlm_head
from mlm_jax.models import layers
from mlm_jax.models.spec import ModelSpec

SPEC = ModelSpec(
    num_layers=3,
    hidden_size=8,
    num_heads=2,
    intermediate_size=16,
    vocab_size=11,  # padded to 16: rows 11..15 must never be predicted
    max_position_embeddings=12,
    pad_vocab_multiple=16,
    initializer_range=0.5,
    layer_norm_eps=1e-6,
)


def numpy_norm(x, p, eps, rms):
    if rms:
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * p["scale"]
    mean = x.mean(-1, keepdims=True)
    out = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"]
    return out + p["bias"] if "bias" in p else out


def numpy_head_states(x, positions, p, use_bias, rms):
    """The head's states at the slots, before the decoder: gather, transform, GELU, norm."""
    h = np.take_along_axis(x, positions[:, :, None], axis=1) @ p["transform"]["kernel"]
    h = h + p["transform"]["bias"] if use_bias else h
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return numpy_norm(h, p["norm"], SPEC.layer_norm_eps, rms)


def randomized(params, seed=1):
    """Every parameter drawn afresh, so zero biases and unit scales cannot hide a mistake."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("use_bias, rms", [(True, False), (False, True)])
def test_sparse_mlm_head_is_gather_transform_tied_decoder_bias_at_the_real_vocabulary(
    use_bias, rms
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    positions = np.array([[0, 5, 2], [4, 4, 1]], np.int32)
    table = rng.standard_normal((16, 8)).astype(np.float32)
    head = mlm_head.SparseMLMHead(SPEC, use_bias=use_bias, rms=rms)
    params = randomized(nn.unbox(head.init(jax.random.key(0), x, positions, table))["params"])
    ours = np.asarray(jax.jit(head.apply)({"params": params}, x, positions, table))

    p = jax.tree.map(np.asarray, params)
    h = numpy_head_states(x, positions, p, use_bias, rms)
    expected = (h @ table.T + p["output_bias"])[..., :11]
    assert ours.shape == (2, 3, 11) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert set(p["transform"]) == ({"kernel", "bias"} if use_bias else {"kernel"})


def test_sparse_mlm_head_gradients_match_numpy_and_never_reach_the_padding_rows():
    """The hand-written bias derivative (a ones matmul) and the table sliced before the matmul
    give numpy's gradients of sum(logits * w): the bias gets w summed over every slot, the
    table w^T h on its real rows and exact zeros on its padding rows."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    positions = np.array([[0, 5, 2], [4, 4, 1]], np.int32)
    table = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((2, 3, 11)).astype(np.float32)
    head = mlm_head.SparseMLMHead(SPEC)
    params = randomized(nn.unbox(head.init(jax.random.key(0), x, positions, table))["params"])

    def objective(params, table):
        return jnp.sum(head.apply({"params": params}, x, positions, table) * w)

    grads, grad_table = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, table)
    h = numpy_head_states(x, positions, jax.tree.map(np.asarray, params), True, False)
    np.testing.assert_allclose(grads["output_bias"][:11], w.sum((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        grad_table[:11], np.einsum("bkv,bke->ve", w, h), rtol=1e-4, atol=1e-4
    )
    assert not np.any(grads["output_bias"][11:]) and not np.any(grad_table[11:])


def test_prediction_transform_module_names_its_parameters_as_the_head_does():
    x = np.ones((2, 8), np.float32)
    module = mlm_head.PredictionTransform(SPEC, use_bias=False)
    params = nn.unbox(module.init(jax.random.key(0), x))["params"]
    assert jax.tree.map(np.shape, params) == {
        "transform": {"kernel": (8, 8)},
        "norm": {"scale": (8,)},
    }


class _Scale(nn.Module):
    """A toy block: x -> tanh(x @ W) + x, with the stack's (config, deterministic) fields."""

    config: ModelSpec
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, unused):
        w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], x.shape[-1]))
        return jnp.tanh(x @ w) + x, None


class _Stack(nn.Module):
    config: ModelSpec

    @nn.compact
    def __call__(self, x):
        block = layers.with_remat(_Scale, self.config)
        return layers.scanned_stack(block, self.config, True, nn.broadcast)(x, None)[0]


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_stack_applies_each_layers_own_weights_in_order(remat):
    import dataclasses

    spec = dataclasses.replace(SPEC, remat=remat)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    params = nn.unbox(_Stack(spec).init(jax.random.key(0), x))["params"]
    w = np.asarray(params["layers"]["w"])
    assert w.shape == (3, 8, 8)  # stacked on a leading layers axis
    expected = x
    for i in range(3):
        expected = np.tanh(expected @ w[i]) + expected
    ours = np.asarray(jax.jit(_Stack(spec).apply)({"params": params}, x))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)

    def loss(p):
        return jnp.sum(_Stack(spec).apply({"params": p}, x) ** 2)

    def unstacked_loss(w):  # the same function written without the stack
        h = x
        for i in range(3):
            h = jnp.tanh(h @ w[i]) + h
        return jnp.sum(h**2)

    grads = jax.jit(jax.grad(loss))(params)["layers"]["w"]
    np.testing.assert_allclose(grads, jax.grad(unstacked_loss)(w), rtol=1e-5, atol=1e-5)


def test_lookup_tokens_takes_table_rows_and_refuses_rows_longer_than_the_positions():
    table = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    tokens = np.array([[3, 0, 15]], np.int32)
    np.testing.assert_array_equal(layers.lookup_tokens(table, tokens, SPEC), table[tokens])
    with pytest.raises(ValueError, match="sequence length 13: longer than .*=12"):
        layers.lookup_tokens(table, np.zeros((1, 13), np.int32), SPEC)


@pytest.mark.parametrize("across", [False, True])
def test_attention_mask_lets_a_real_query_see_exactly_its_documents_real_keys(across):
    docs = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 0, 0, 0]], np.int32)
    tokens = np.where(docs > 0, 7, 0).astype(np.int32)
    mask = np.asarray(layers.attention_mask(tokens, docs, pad_id=0, attend_across_documents=across))
    assert mask.shape == (2, 1, 6, 6)
    for b, q, k in np.ndindex(2, 6, 6):
        if docs[b, q] == 0:
            continue  # padding queries: any harmless row
        same = docs[b, k] != 0 and (across or docs[b, k] == docs[b, q])
        assert mask[b, 0, q, k] == same, (b, q, k)


def test_separate_qkv_matmuls_equal_the_fused_one():
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    fused = layers.Dense(SPEC, (3, 2, 4), ("embed", None, "heads", "kv"))
    params = randomized(nn.unbox(fused.init(jax.random.key(0), x))["params"])
    whole = np.asarray(fused.apply({"params": params}, x))
    apart = layers.Dense(SPEC, (3, 2, 4), ("embed", None, "heads", "kv"), separate=True)
    parts = apart.apply({"params": params}, x)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(parts[i]), whole[:, :, i], rtol=1e-6, atol=1e-6)
    kernel = np.asarray(params["kernel"]).reshape(8, 24)
    expected = x @ kernel + np.asarray(params["bias"]).reshape(24)
    np.testing.assert_allclose(whole.reshape(2, 5, 24), expected, rtol=1e-5, atol=1e-5)


# X^T dY for the first two, (dY^T X)^T for the last two (their outputs are narrower)
@pytest.mark.parametrize(
    "axis, features", [(-1, (3, 4)), ((-2, -1), 5), (-1, 2), ((-2, -1), (1, 2))]
)
def test_dense_gradients_match_numpy_in_the_kernels_own_order(axis, features):
    """`project`'s hand-written backward gives numpy's gradients of sum(dense(x) * w) for one
    and for several contracted dims, whichever operand it has XLA copy."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    n_out = len(features) if isinstance(features, tuple) else 1
    names = ("embed",) * (1 if axis == -1 else 2) + (None,) * n_out
    dense = layers.Dense(SPEC, features, names, axis=axis, use_bias=False)
    kernel = randomized(nn.unbox(dense.init(jax.random.key(0), x))["params"])["kernel"]
    out_shape = dense.apply({"params": {"kernel": kernel}}, x).shape
    w = rng.standard_normal(out_shape).astype(np.float32)

    def objective(x, kernel):
        return jnp.sum(dense.apply({"params": {"kernel": kernel}}, x) * w)

    grad_x, grad_kernel = jax.jit(jax.grad(objective, argnums=(0, 1)))(x, kernel)
    n_in = 1 if axis == -1 else 2
    x2 = x.reshape(-1, int(np.prod(x.shape[-n_in:]))).astype(np.float64)
    k2 = np.asarray(kernel, np.float64).reshape(x2.shape[1], -1)
    w2 = w.reshape(x2.shape[0], -1).astype(np.float64)
    np.testing.assert_allclose(grad_kernel, (x2.T @ w2).reshape(kernel.shape), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad_x, (w2 @ k2.T).reshape(x.shape), rtol=1e-5, atol=1e-4)
