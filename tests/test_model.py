"""The encoder and MLM head: sparse head, masking of padding/documents, dtypes, annotations.

Agreement with Hugging Face BERT on real weights is in test_hf.py.
"""

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from scipy.special import erf, log_softmax, ndtr

from mlm_jax.models.bert import BertEncoder, BertForSequenceClassification, BertMLM
from mlm_jax.models.head import tied_logits
from mlm_jax.models.layers import activation
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training.loss import is_first_argmax, mlm_loss

LOGICAL_NAMES = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers"}


def tiny_config(**overrides) -> ModelSpec:
    values = dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        vocab_size=90,  # padded to 128: the head must never predict rows 90..127
        max_position_embeddings=64,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        initializer_range=0.2,  # large enough that outputs differ clearly between inputs
        pad_vocab_multiple=128,
    )
    values.update(overrides)
    return ModelSpec(**values)


def random_batch(seed=0, batch=3, length=24, k=5, vocab=90):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    lengths = np.array([length, length - 7, length - 13])[:batch]
    real = np.arange(length)[None] < lengths[:, None]
    tokens = np.where(real, tokens, 0)
    positions = np.stack([rng.choice(n, k, replace=False) for n in lengths]).astype(np.int32)
    targets = rng.integers(0, vocab, (batch, k)).astype(np.int32)
    weights = (rng.random((batch, k)) < 0.8).astype(np.float32)
    weights[0, 0] = 1.0
    return tokens, positions, targets, weights


def init_params(model, config, tokens, positions):
    init = jax.jit(model.init)
    return nn.unbox(init(jax.random.key(0), jnp.asarray(tokens), jnp.asarray(positions)))["params"]


def jitted(model):
    """model.apply under jit (op-by-op dispatch of a whole model is slow on CPU)."""
    return jax.jit(model.apply, static_argnames=("deterministic",))


def numpy_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def numpy_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_sparse_head_equals_full_vocabulary_head_at_the_same_positions():
    config = tiny_config()
    tokens, positions, targets, weights = random_batch()
    model = BertMLM(config)
    params = init_params(model, config, tokens, positions)
    logits = np.asarray(jitted(model)({"params": params}, tokens, positions))
    assert logits.shape == (3, 5, config.vocab_size)

    # Reference: the head in numpy over every position and the whole (real) vocabulary.
    hidden = np.asarray(
        jitted(BertEncoder(config))({"params": params["encoder"]}, tokens), np.float64
    )
    head = jax.tree.map(lambda x: np.asarray(x, np.float64), params["mlm_head"])
    h = numpy_gelu(hidden @ head["transform"]["kernel"] + head["transform"]["bias"])
    h = numpy_layer_norm(h, head["norm"], config.layer_norm_eps)
    table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"], np.float64)
    full_BxLxV = h @ table[: config.vocab_size].T + head["output_bias"][: config.vocab_size]
    expected = np.take_along_axis(full_BxLxV, positions[:, :, None], axis=1)
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)

    loss, metrics = mlm_loss(jnp.asarray(logits), targets, weights)
    losses = -np.take_along_axis(log_softmax(expected, -1), targets[:, :, None], -1)[..., 0]
    np.testing.assert_allclose(loss, (losses * weights).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_sum"], (losses * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_sum"], weights.sum())
    correct = (expected.argmax(-1) == targets) * weights
    np.testing.assert_allclose(metrics["correct_sum"], correct.sum())


def test_padded_vocabulary_rows_are_never_predicted():
    config = tiny_config()
    tokens, positions, _, _ = random_batch()
    model = BertMLM(config)
    params = init_params(model, config, tokens, positions)
    # Make the padding rows irresistible: they must still not appear in the output.
    params["mlm_head"]["output_bias"] = (
        params["mlm_head"]["output_bias"].at[config.vocab_size :].set(1e4)
    )
    logits = jitted(model)({"params": params}, tokens, positions)
    assert logits.shape[-1] == config.vocab_size
    assert float(jnp.max(logits)) < 1e3


def test_mlm_loss_with_no_predictions_is_zero_not_nan():
    loss, metrics = mlm_loss(jnp.zeros((2, 3, 7)), jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
    assert float(loss) == 0.0 and float(metrics["weight_sum"]) == 0.0


def test_accuracy_is_numpys_argmax_with_its_ties():
    """Logits of a few small integers tie everywhere: a hit is the first maximum's index."""
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(64, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(64, 5))
    hits = np.asarray(is_first_argmax(jnp.asarray(logits), jnp.asarray(targets)))
    np.testing.assert_array_equal(hits, logits.argmax(-1) == targets)
    assert 0 < hits.sum() < hits.size and (logits.max(-1) == logits[..., 0]).any()


@pytest.mark.parametrize("use_document_ids", [False, True])
def test_padding_does_not_change_real_positions(use_document_ids):
    config = tiny_config()
    tokens, _, _, _ = random_batch(length=24)
    encoder = BertEncoder(config)
    params = nn.unbox(jax.jit(encoder.init)(jax.random.key(1), tokens))["params"]
    real = tokens != 0
    # The same rows with 16 more padding columns, filled with junk when document ids mark them.
    wider = np.zeros((3, 40), np.int32)
    wider[:, :24] = tokens
    kwargs_short, kwargs_wide = {}, {}
    if use_document_ids:
        wider[~np.pad(real, ((0, 0), (0, 16)))] = 7  # not [PAD]: only document_ids == 0 says so
        kwargs_short = {"document_ids_BxL": real.astype(np.int32)}
        kwargs_wide = {"document_ids_BxL": np.pad(real, ((0, 0), (0, 16))).astype(np.int32)}
    short = jitted(encoder)({"params": params}, tokens, **kwargs_short)
    wide = jitted(encoder)({"params": params}, wider, **kwargs_wide)
    np.testing.assert_allclose(np.asarray(wide)[:, :24][real], np.asarray(short)[real], atol=1e-5)
    assert not np.isnan(np.asarray(wide)).any()


@pytest.mark.parametrize("attend_across_documents", [False, True])
def test_other_documents_do_not_change_a_documents_outputs(attend_across_documents):
    config = tiny_config(attend_across_documents=attend_across_documents)
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 90, (2, 20)).astype(np.int32)
    tokens[1, :8] = tokens[0, :8]  # same first document, different second document
    document_ids = np.array([[1] * 8 + [2] * 10 + [0] * 2] * 2, np.int32)
    tokens[:, 18:] = 0
    encoder = BertEncoder(config)
    params = nn.unbox(jax.jit(encoder.init)(jax.random.key(2), tokens))["params"]
    hidden = np.asarray(jitted(encoder)({"params": params}, tokens, document_ids_BxL=document_ids))
    first_doc_difference = np.abs(hidden[0, :8] - hidden[1, :8]).max()
    if attend_across_documents:
        assert first_doc_difference > 1e-2  # the control: the test can see leakage
    else:
        assert first_doc_difference < 1e-5


def test_bfloat16_loss_is_within_one_percent_of_float32():
    tokens, positions, targets, weights = random_batch(length=32)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(dtype=dtype, initializer_range=0.05)
        model = BertMLM(config)
        params = init_params(model, config, tokens, positions)  # same key: same float32 params
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
        logits = jitted(model)({"params": params}, tokens, positions)
        assert logits.dtype == jnp.float32
        losses[dtype] = float(mlm_loss(logits, targets, weights)[0])
    assert abs(losses["bfloat16"] - losses["float32"]) <= 1e-2 * losses["float32"]


def test_scan_and_remat_variants_compute_the_same_function_and_gradients():
    tokens, positions, targets, weights = random_batch()
    stacked = None
    results = []
    variants = [(True, "none", True), (True, "dots", True), (False, "full", True)]
    variants += [(True, "dots", False), (False, "none", False)]  # q, k, v as three matmuls
    for scan_layers, remat, fused_qkv in variants:
        config = tiny_config(scan_layers=scan_layers, remat=remat, fused_qkv=fused_qkv)
        model = BertMLM(config)
        params = init_params(model, config, tokens, positions)
        if stacked is None:
            stacked = params
        elif not scan_layers:  # same weights, unstacked into layer_0, layer_1
            params = dict(params)
            params["encoder"] = {"embeddings": stacked["encoder"]["embeddings"]}
            for i in range(config.num_layers):
                params["encoder"][f"layer_{i}"] = jax.tree.map(
                    lambda x, i=i: x[i], stacked["encoder"]["layers"]
                )
            params["mlm_head"] = stacked["mlm_head"]

        def loss_fn(p, model=model):
            return mlm_loss(model.apply({"params": p}, tokens, positions), targets, weights)[0]

        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
        results.append((float(loss), grads["mlm_head"]["transform"]["kernel"]))
    for loss, grad in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-5)
        np.testing.assert_allclose(grad, results[0][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_gelu_and_its_derivative_match_float64_references_in_float32_and_bfloat16(gelu):
    x = np.linspace(-12.0, 12.0, 4801).astype(np.float32)
    x64 = x.astype(np.float64)
    if gelu == "exact":  # x Phi(x), its derivative Phi(x) + x phi(x)
        cdf, dcdf = ndtr(x64), np.exp(-0.5 * x64**2) / np.sqrt(2.0 * np.pi)
    else:  # x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        u = np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)
        cdf = 0.5 * (1.0 + np.tanh(u))
        dcdf = 0.5 / np.cosh(u) ** 2 * np.sqrt(2.0 / np.pi) * (1.0 + 3 * 0.044715 * x64**2)
    config = tiny_config(gelu=gelu)
    value, grad = jax.vmap(jax.value_and_grad(lambda v: activation(config, v)))(jnp.asarray(x))
    np.testing.assert_allclose(value, x64 * cdf, rtol=1e-6, atol=1e-6)
    # atol: in the far negative tail 1 - tanh(u)^2 cancels in float32 (the slope, ~1e-6, is 0)
    np.testing.assert_allclose(grad, cdf + x64 * dcdf, rtol=1e-5, atol=1e-5)
    # bfloat16 in: computed in float32, so only the final rounding to bfloat16 (2^-8) differs.
    rounded = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    got = activation(config, jnp.asarray(rounded, jnp.bfloat16))
    expected = activation(config, jnp.asarray(rounded))
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=2**-8, atol=1e-30)


def test_tied_logits_backward_matmuls_run_in_the_compute_dtype():
    keys = jax.random.split(jax.random.key(0), 3)
    h, table = jax.random.normal(keys[0], (2, 3, 8)), jax.random.normal(keys[1], (16, 8))
    cotangent = jax.random.normal(keys[2], (2, 3, 16))

    def plain(h, table):
        return jnp.einsum("bke,ve->bkv", h, table, preferred_element_type=jnp.float32)

    def grads(logits_fn, dtype):
        loss = lambda h, t: jnp.sum(logits_fn(h, t) * cotangent)  # noqa: E731
        args = (h.astype(dtype), table.astype(dtype))
        return jax.grad(loss, argnums=(0, 1))(*args), jax.make_jaxpr(jax.grad(loss))(*args)

    (exact, _), (ours, _) = grads(plain, jnp.float32), grads(tied_logits, jnp.float32)
    for a, b in zip(ours, exact):
        np.testing.assert_array_equal(a, b)  # float32: the same computation
    (low, jaxpr) = grads(tied_logits, jnp.bfloat16)
    for a, b in zip(low, exact):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=2e-2, atol=2e-2)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    # Forward mode too (a custom JVP, not a custom VJP), in float32 out.
    tangent = jax.jvp(lambda x: tied_logits(x, table), (h,), (h,))[1]
    np.testing.assert_allclose(tangent, plain(h, table), rtol=1e-6)


def test_backward_keeps_mlp_activations_in_the_compute_dtype_as_the_remat_policy_says():
    tokens, positions, targets, weights = random_batch()

    def saved_mlp_activations(remat, dtype="float32"):
        config = tiny_config(scan_layers=False, remat=remat, dtype=dtype)
        model = BertMLM(config)
        params = init_params(model, config, tokens, positions)

        def loss_fn(p):
            return mlm_loss(model.apply({"params": p}, tokens, positions), targets, weights)[0]

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(loss_fn, params)
        shape = "[{},{},{}] ".format(*tokens.shape, config.intermediate_size)  # [B,L,M]
        return sorted(
            line.split(" from ")[0].replace(shape, " ")
            for line in out.getvalue().splitlines()
            if shape in line
        )

    # dots keeps mlp_in's matmul output and recomputes bias and GELU from it in the backward.
    assert saved_mlp_activations("dots") == ["f32 output of dot_general"] * 2
    # No remat: the GELU's output and its slope, in bfloat16 (its float32 internals stay inside).
    assert saved_mlp_activations("none", "bfloat16") == ["bf16 output of convert_element_type"] * 4


def test_attention_dropout_path_matches_fused_attention_when_dropout_is_negligible():
    tokens, positions, _, _ = random_batch()
    document_ids = np.where(tokens != 0, 1 + (np.arange(24) >= 9), 0).astype(np.int32)
    fused = BertMLM(tiny_config())
    explicit = BertMLM(tiny_config(attention_dropout_rate=1e-9))  # spelled-out softmax path
    params = init_params(fused, fused.config, tokens, positions)
    a = jitted(fused)({"params": params}, tokens, positions, document_ids_BxL=document_ids)
    b = jitted(explicit)(
        {"params": params},
        tokens,
        positions,
        document_ids_BxL=document_ids,
        deterministic=False,
        rngs={"dropout": jax.random.key(0)},
    )
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_dropout_is_active_in_training_and_keyed():
    config = tiny_config(dropout_rate=0.1, attention_dropout_rate=0.1)
    tokens, positions, _, _ = random_batch()
    model = BertMLM(config)
    params = init_params(model, config, tokens, positions)
    apply = jitted(model)

    def run(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return apply({"params": params}, tokens, positions, deterministic=False, rngs=rngs)

    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(np.asarray(run(0)) - np.asarray(run(1))).max() > 1e-3


def test_bf16_dropout_keeps_the_expectation():
    """Kept units are x / keep_prob rounded once to bfloat16: over many units the relative error
    averages to ~0 (it was -0.16 % when the scale itself was rounded to bfloat16 first)."""
    from mlm_jax.models.layers import Dropout

    x = jax.random.normal(jax.random.key(0), (1000, 1024), jnp.float32).astype(jnp.bfloat16)
    y = Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kept = y64 != 0
    keep_prob = 1 - round(0.1 * 2**16) / 2**16
    relative = y64[kept] / (x64[kept] / keep_prob) - 1
    assert abs(relative.mean()) < 2e-4  # bf16 rounding: |error| <= 2^-9, mean over ~900k units
    assert abs(kept.mean() - keep_prob) < 5 * (0.09 / kept.size) ** 0.5


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_logical_axis_names(scan_layers):
    config = tiny_config(scan_layers=scan_layers, pre_ln=True)
    tokens, positions, _, _ = random_batch()
    shapes = jax.eval_shape(lambda: BertMLM(config).init(jax.random.key(0), tokens, positions))
    specs = nn.get_partition_spec(shapes)
    flat_shapes = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(flat_shapes) == len(flat_specs)
    for (path, shape), spec in zip(flat_shapes, flat_specs):
        name = jax.tree_util.keystr(path)
        assert len(spec) == len(shape.shape), name
        used = [axis for axis in spec if axis is not None]
        assert used, f"{name} has no logical axis names"
        assert set(used) <= LOGICAL_NAMES, (name, spec)
        assert len(used) == len(set(used)), (name, spec)
        in_stack = "['layers']" in name
        assert (spec[0] == "layers") == (scan_layers and in_stack), (name, spec)
    by_name = {jax.tree_util.keystr(p): tuple(s) for (p, _), s in zip(flat_shapes, flat_specs)}
    layer = "['layers']" if scan_layers else "['layer_0']"
    prefix = ("layers",) if scan_layers else ()
    assert by_name[f"['params']['encoder']{layer}['qkv']['kernel']"] == prefix + (
        "embed",
        None,
        "heads",
        "kv",
    )
    assert by_name[f"['params']['encoder']{layer}['mlp_out']['kernel']"] == prefix + (
        "mlp",
        "embed",
    )
    assert by_name["['params']['encoder']['embeddings']['word_embeddings']"] == ("vocab", "embed")


def test_classification_head_shapes_and_logical_names():
    config = tiny_config(scan_layers=False)
    tokens, _, _, _ = random_batch()
    model = BertForSequenceClassification(config, num_labels=3)
    variables = jax.jit(model.init)(jax.random.key(0), tokens)
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["classifier"]["kernel"]) == ("embed", None)
    logits = jitted(model)(nn.unbox(variables), tokens)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32


def test_model_spec_from_config_resolves_vocab_and_rejects_bad_values():
    import types

    from ml_collections import config_dict

    base = dict(num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16, vocab_size=0)
    tokenizer = types.SimpleNamespace(vocab_size=300, pad_id=0)
    config = ModelSpec.from_config(config_dict.ConfigDict(base)).with_vocab(tokenizer)
    assert config.vocab_size == 300 and config.padded_vocab_size == 384
    with pytest.raises(ValueError, match="num_heads"):
        ModelSpec.from_config(config_dict.ConfigDict({**base, "num_heads": 3}))
    with pytest.raises(ValueError, match="remat"):
        ModelSpec.from_config(config_dict.ConfigDict({**base, "remat": "some"}))
    with pytest.raises(ValueError, match="model.vocab_size=200 is smaller than the tokenizer"):
        ModelSpec.from_config(config_dict.ConfigDict({**base, "vocab_size": 200})).with_vocab(
            tokenizer
        )
