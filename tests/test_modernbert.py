"""ModernBERT against transformers' ModernBertForMaskedLM (PyTorch, CPU, float32), and its checks."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from mlm_jax.models import attention, modernbert
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import pretrained

LENGTHS = (24, 17, 9, 3)  # a padded batch: every row but the first ends in padding


def hf_config(**overrides):
    """Small, 5 layers (global 0, 2, 4; local 1, 3), a window of 8 (+-4) < the 24-token rows."""
    config = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=5,
        num_attention_heads=4,
        local_attention=8,
        global_attn_every_n_layers=2,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        max_position_embeddings=64,
    )
    return transformers.ModernBertConfig(**{**config, **overrides})


@pytest.fixture(scope="module")
def hf_model():
    """A random ModernBertForMaskedLM whose norms and decoder bias are not their init values
    and whose attention is sharp enough (Wqkv x15) that positions and windows matter."""
    torch.manual_seed(0)
    model = transformers.ModernBertForMaskedLM(hf_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "decoder.bias" in name:
                p.add_(0.3 * torch.randn_like(p))
            if "Wqkv" in name:
                p.mul_(15)
    return model


def padded_batch(length=24):
    rng = np.random.default_rng(0)
    tokens = np.zeros((len(LENGTHS), length), np.int32)
    for i, n in enumerate(LENGTHS):
        tokens[i, : min(n, length)] = rng.integers(3, 100, min(n, length))
    return tokens, tokens != 0


def hf_logits(model, tokens, real):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(real).long()
        )
    return out.logits.numpy()


def our_logits(spec, params, tokens):
    positions = np.tile(np.arange(tokens.shape[1], dtype=np.int32), (tokens.shape[0], 1))
    apply = jax.jit(modernbert.ModernBertMLM(spec).apply)
    return np.asarray(apply({"params": params}, tokens, positions))


@pytest.mark.slow
def test_random_modernbert_imports_and_matches_transformers_logits(hf_model, tmp_path):
    """Both HF layouts import (ModernBertForMaskedLM, ModernBertModel), and our logits equal
    transformers' at every real position, through the blocked local attention (24 tokens) and
    the masked dense one (22: blocks of 4 do not tile it), scanned or unrolled."""
    hf_model.save_pretrained(tmp_path / "mlm")
    hf_model.model.save_pretrained(tmp_path / "base")
    loaded = pretrained.load(str(tmp_path / "mlm"), tokenizer=None)
    spec, params = loaded.spec, loaded.params
    assert (spec.arch, spec.global_every, spec.local_window, loaded.has_mlm_head) == (
        "modernbert", 2, 8, True
    )  # fmt: skip
    for length in (24, 22):
        assert modernbert.uses_blocks(length, 8) == (length == 24)
        tokens, real = padded_batch(length)
        reference = hf_logits(hf_model, tokens, real)
        np.testing.assert_allclose(
            our_logits(spec, params, tokens)[real], reference[real], atol=1e-4
        )
    unrolled = dataclasses.replace(spec, scan_layers=False)
    params_unrolled = pretrained.load(str(tmp_path / "mlm"), tokenizer=None, spec=unrolled).params
    np.testing.assert_allclose(
        our_logits(unrolled, params_unrolled, tokens)[real], reference[real], atol=1e-4
    )
    base = pretrained.load(str(tmp_path / "base"), tokenizer=None)
    assert not base.has_mlm_head
    np.testing.assert_array_equal(
        base.params["encoder"]["layers"]["qkv"]["kernel"],
        params["encoder"]["layers"]["qkv"]["kernel"],
    )
    # the comparison can fail: a window, interval or theta off by a little is far off
    for change in (dict(local_window=10), dict(global_every=5), dict(local_rope_theta=1000.0)):
        wrong = our_logits(dataclasses.replace(spec, **change), params, tokens)
        assert np.abs(wrong[real] - reference[real]).max() > 1e-3, change


def test_blocked_local_attention_equals_the_masked_full_one_with_documents():
    rng = np.random.default_rng(1)
    b, length, n, d, half = 2, 32, 2, 4, 4
    q, k, v = (rng.standard_normal((b, length, n, d)).astype(np.float32) for _ in range(3))
    groups = np.sort(rng.integers(0, 4, (b, length)), axis=1).astype(np.int32)  # 0 = padding
    kw = dict(scale=0.5, dtype=np.float32, dropout_key=None, dropout_rate=0.0)
    blocked = jax.jit(
        lambda q, k, v, g: modernbert.blocked_local_attention(q, k, v, g, half, **kw)
    )(q, k, v, groups)
    pos = np.arange(length)
    mask = (groups[:, :, None] == groups[:, None, :]) & (np.abs(pos[:, None] - pos) <= half)
    dense = modernbert._softmax_attention(
        q, k, v, mask[:, None], spec=("bqnd,bknd->bnqk", "bnqk,bknd->bqnd"), **kw
    )
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(dense), atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(arch="roberta"), "config.model.arch='roberta': expected one of bert, modernbert"),
        (dict(local_window=7), "config.model.local_window=7: expected an even number"),
        (dict(global_every=5), "config.model.global_every=5: expected an integer in 1..4"),
        (dict(norm="batchnorm"), "config.model.norm='batchnorm'"),
        (dict(glu_activation="relu"), "config.model.glu_activation='relu'"),
    ],
)
def test_bad_model_values_name_the_key(change, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        shape = dict(num_layers=4, hidden_size=32, num_heads=4, intermediate_size=48)
        ModelSpec(**{**shape, "arch": "modernbert", **change})


def test_import_of_another_architecture_names_the_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match=f"^{tmp_path}/config.json: model_type='roberta'"):
        pretrained.load(str(tmp_path), tokenizer=None)
    config = hf_config(layer_types=["full_attention", "sliding_attention"] * 2 + ["full_attention"])
    config.layer_types[1] = "full_attention"
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(ValueError, match="layer_types=.*expected global attention every n"):
        pretrained.load(str(tmp_path), tokenizer=None, weights=False)


def test_a_window_that_covers_every_row_is_refused_before_anything_is_built():
    from mlm_jax.training.resolve import resolve
    from tests.configs import small_run_config

    config = small_run_config("")  # 64-token rows
    config.model.update(arch="modernbert", num_layers=3, local_window=128)
    with pytest.raises(ValueError, match=r"^config\.model\.local_window=128 covers every 64-token"):
        resolve(config, num_devices=1, local_devices=1, num_hosts=1)
    config.model.local_window = 124  # +-62: the first and last token of a row do not meet
    assert resolve(config, num_devices=1, local_devices=1, num_hosts=1).model.has_local_layers


def test_configs_have_modernberts_shapes_masking_and_the_common_eval():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "modernbert.py")
    spec = importlib.util.spec_from_file_location("modernbert_configs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shapes = {"tiny": (4, 128, 4, 384), "base": (22, 768, 12, 1152), "large": (28, 1024, 16, 2624)}
    for name, shape in shapes.items():
        c = module.get_config(name)
        model = ModelSpec.from_config(c.model)
        dims = (model.num_layers, model.hidden_size, model.num_heads, model.intermediate_size)
        assert model.arch == "modernbert" and dims == shape
        assert c.masking.ratio == 0.3 and c.eval.mask_ratio == 0.15
    with pytest.raises(ValueError, match="configs/modernbert.py:huge: expected one of tiny"):
        module.get_config("huge")


def test_a_run_started_before_the_new_keys_existed_still_resumes(monkeypatch):
    import ml_collections

    from mlm_jax.training import resume
    from tests.configs import small_run_config

    old = small_run_config("").to_dict()
    for section, key in (("model", "arch"), ("model", "local_window"), ("train", "decay_share")):
        del old[section][key]
    monkeypatch.setattr(resume.ckpt, "latest_step", lambda workdir: 10)
    monkeypatch.setattr(resume.ckpt, "saved_config", lambda workdir: ml_collections.ConfigDict(old))
    config = small_run_config("")
    resume.check_resume_compatible(config, "run")  # the new keys at their defaults
    config.model.arch = "modernbert"
    with pytest.raises(ValueError, match="model.arch: None -> 'modernbert'"):
        resume.check_resume_compatible(config, "run")


def test_rotary_tables_match_transformers_at_modernberts_longest_positions():
    """cos and sin at positions 0..8191 (ModernBERT's long-context phase, its thetas) within
    1e-6 of transformers' float32 ones (a frequency rounded otherwise is 2e-4 off there)."""
    thetas = {"full_attention": 160000.0, "sliding_attention": 10000.0}  # ModernBERT's
    config = hf_config(
        hidden_size=256,
        max_position_embeddings=8192,
        global_rope_theta=thetas["full_attention"],
        local_rope_theta=thetas["sliding_attention"],
    )
    rotary = transformers.models.modernbert.modeling_modernbert.ModernBertRotaryEmbedding(config)
    positions = torch.arange(8192)[None]
    x = torch.zeros(1, dtype=torch.float32)
    for layer_type, theta in thetas.items():
        cos, sin = rotary(x, positions, layer_type)
        ours = attention.rope_tables(8192, 64, theta)
        for mine, theirs in zip(ours, (cos[0], sin[0])):
            np.testing.assert_allclose(np.asarray(mine), theirs.numpy(), rtol=0, atol=1e-6)
