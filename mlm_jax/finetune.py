"""Downstream fine-tuning: sentence (pair) classification from a pretrained run, or from scratch.

    python -m mlm_jax.finetune --pretrained=RUN_DIR --task=tsv:train.tsv,dev.tsv --workdir=OUT
    python -m mlm_jax.finetune --pretrained=RUN_DIR --init=random --task=... --workdir=OUT
    python -m mlm_jax.finetune --pretrained=HF_BERT_DIR --task=tfds:glue/sst2 --workdir=OUT

MLM losses at different masking ratios do not compare on their own; accuracy on a downstream
task does. The encoder comes from the run's latest checkpoint (mlm_jax.training.checkpoint.load_trained)
or a Hugging Face BERT directory (mlm_jax.hf). The classifier starts fresh; so does the pooler
from a run directory (MLM pretraining does not train one), while a Hugging Face checkpoint's
pooler is loaded, as transformers' BertForSequenceClassification loads it.
`--init=random` keeps the run's architecture and tokenizer but not its weights: the baseline
that tells what pretraining bought.

Tasks:
  tsv:TRAIN,DEV     lines `label<TAB>text[<TAB>text2]` (no header); labels are any strings.
  tfds:glue/NAME    GLUE through tfds.data_source (sst2, cola, mrpc, qqp, mnli, qnli, rte, wnli);
                    prepare once with `tfds build glue/NAME --file_format=array_record`.
Pairs are encoded `[CLS] a [SEP] b [SEP]` with token types 0 then 1, the longer text cut first.

Writes OUT/metrics.jsonl (one line per epoch: train loss, dev loss and accuracy) and
OUT/result.json (final dev accuracy and the majority-class accuracy on dev).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlm_jax import cli, files
from mlm_jax.training import pretrained as pretrained_lib
from mlm_jax.training.optim import OptimizerSpec, make_optimizer

log = logging.getLogger("mlm_jax.finetune")  # also when run as __main__

RESULT_FILE = "result.json"

# GLUE task -> (text features, dev split). stsb is regression and not handled here.
GLUE = {
    "sst2": (("sentence",), "validation"),
    "cola": (("sentence",), "validation"),
    "mrpc": (("sentence1", "sentence2"), "validation"),
    "qqp": (("question1", "question2"), "validation"),
    "mnli": (("premise", "hypothesis"), "validation_matched"),
    "qnli": (("question", "sentence"), "validation"),
    "rte": (("sentence1", "sentence2"), "validation"),
    "wnli": (("sentence1", "sentence2"), "validation"),
}


@dataclasses.dataclass
class Split:
    texts_a: list[str]
    texts_b: list[str] | None  # second text of each pair, None for single sentences
    labels: np.ndarray  # int32 [n]


@dataclasses.dataclass
class Task:
    train: Split
    dev: Split
    num_labels: int
    label_names: list[str]


# ----------------------------------------------------------------------------- tasks


def _read_tsv(path: str) -> list[list[str]]:
    if not os.path.exists(path):
        raise ValueError(f"task file {path!r} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) not in (2, 3):
                raise ValueError(
                    f"{path}:{number}: expected label<TAB>text[<TAB>text2], got {len(fields)} fields"
                )
            rows.append(fields)
    if not rows:
        raise ValueError(f"task file {path!r} has no examples")
    return rows


def load_tsv_task(train_path: str, dev_path: str) -> Task:
    train_rows, dev_rows = _read_tsv(train_path), _read_tsv(dev_path)
    widths = {len(r) for r in train_rows + dev_rows}
    if len(widths) > 1:
        raise ValueError(f"{train_path},{dev_path}: mix of single texts and pairs")
    names = sorted({r[0] for r in train_rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({r[0] for r in dev_rows} - set(index))
    if unknown:
        raise ValueError(f"{dev_path}: labels {unknown} do not occur in {train_path}")

    def split(rows):
        return Split(
            texts_a=[r[1] for r in rows],
            texts_b=[r[2] for r in rows] if widths == {3} else None,
            labels=np.asarray([index[r[0]] for r in rows], np.int32),
        )

    return Task(split(train_rows), split(dev_rows), len(names), names)


def load_glue_task(name: str, data_dir: str | None = None) -> Task:
    import tensorflow_datasets as tfds

    if name not in GLUE:
        raise ValueError(f"task tfds:glue/{name}: expected one of {', '.join(sorted(GLUE))}")
    features, dev_split = GLUE[name]

    def split(which: str) -> Split:
        try:
            source = tfds.data_source(
                f"glue/{name}", split=which, data_dir=data_dir or None, download=False
            )
        except Exception as e:  # not built / not downloadable offline
            raise ValueError(
                f"tfds:glue/{name} is not prepared under {data_dir or '$TFDS_DATA_DIR'} "
                f"({type(e).__name__}); build it once with `tfds build glue/{name} "
                "--file_format=array_record` (needs network)"
            ) from e
        examples = [source[i] for i in range(len(source))]

        def text(ex, key):
            value = ex[key]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)

        return Split(
            texts_a=[text(ex, features[0]) for ex in examples],
            texts_b=[text(ex, features[1]) for ex in examples] if len(features) > 1 else None,
            labels=np.asarray([int(ex["label"]) for ex in examples], np.int32),
        )

    train, dev = split("train"), split(dev_split)
    num_labels = int(max(train.labels.max(), dev.labels.max())) + 1
    return Task(train, dev, num_labels, [str(i) for i in range(num_labels)])


def load_task(spec: str, data_dir: str | None = None) -> Task:
    kind, _, rest = spec.partition(":")
    if kind == "tsv":
        paths = rest.split(",")
        if len(paths) != 2 or not all(paths):
            raise ValueError(f"--task={spec!r}: expected tsv:TRAIN,DEV")
        return load_tsv_task(*paths)
    if kind == "tfds" and rest.startswith("glue/"):
        return load_glue_task(rest.split("/", 1)[1], data_dir)
    raise ValueError(f"--task={spec!r}: expected tsv:TRAIN,DEV or tfds:glue/<name>")


# ----------------------------------------------------------------------------- encoding


def encode(tokenizer, split: Split, max_len: int) -> dict[str, np.ndarray]:
    """tokens / token_types int32 [n, max_len] and labels [n]: [CLS] a [SEP] (b [SEP])."""
    pieces_a = [ids for ids, _ in tokenizer.encode_arrays(split.texts_a)]
    pieces_b = [ids for ids, _ in tokenizer.encode_arrays(split.texts_b)] if split.texts_b else None
    n = len(pieces_a)
    tokens = np.full((n, max_len), tokenizer.pad_id, np.int32)
    types = np.zeros((n, max_len), np.int32)
    for i in range(n):
        a = list(pieces_a[i])
        b = list(pieces_b[i]) if pieces_b else []
        room = max_len - (3 if pieces_b else 2)
        while len(a) + len(b) > room:  # cut the longer text first, as BERT's GLUE scripts do
            if len(a) > len(b):
                a.pop()
            else:
                b.pop()
        row = [tokenizer.cls_id, *a, tokenizer.sep_id]
        if pieces_b:
            types[i, len(row) : len(row) + len(b) + 1] = 1
            row += [*b, tokenizer.sep_id]
        tokens[i, : len(row)] = row
    return {"tokens": tokens, "token_types": types, "labels": split.labels.astype(np.int32)}


# ----------------------------------------------------------------------------- model


def load_encoder(
    path: str, tokenizer_path: str = "", *, weights: bool = True
) -> pretrained_lib.Pretrained:
    """The model to fine-tune: a run directory or a Hugging Face BERT directory
    (pretrained_lib.load), or, with path '', the default architecture with no weights
    (params {}) and the tokenizer given."""
    from mlm_jax.config.defaults import base_config
    from mlm_jax.data.tokenizer import load_tokenizer
    from mlm_jax.models.spec import ModelSpec

    if not path:  # from scratch with the default architecture and a given tokenizer
        if not tokenizer_path:
            raise ValueError("--pretrained='' needs --tokenizer=PATH (vocab.txt or a directory)")
        tokenizer = load_tokenizer(tokenizer_path)
        spec = ModelSpec.from_config(base_config().model).with_vocab(tokenizer)
        return pretrained_lib.Pretrained(spec, {}, tokenizer, 128, has_mlm_head=False, where="")
    if not files.isdir(path):
        raise ValueError(f"--pretrained={path!r} is not a directory")
    return pretrained_lib.load(path, tokenizer=tokenizer_path, weights=weights)


def _init_params(model, source: pretrained_lib.Pretrained | None, seq_len: int, seed: int):
    """The classifier's parameters: fresh, then the encoder (and a HF checkpoint's pooler) of
    `source` where it has weights (pretrained_lib.fit); None or no weights keeps them all fresh."""
    import flax.linen as nn

    tokens = jnp.zeros((1, seq_len), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), tokens))["params"]
    if source is None or not source.params:
        return params
    return jax.tree.map(jnp.asarray, pretrained_lib.fit(source, params))


# ----------------------------------------------------------------------------- training


def optimizer_spec(
    learning_rate: float, total_steps: int, warmup_fraction: float, weight_decay: float
) -> OptimizerSpec:
    """BERT's fine-tuning AdamW: linear warmup and decay, clipping at 1, beta2 0.999, and weight
    decay on matrices and embeddings only, as in pretraining (decaying LayerNorm scales toward 0
    and biases is not what the pretrained weights were trained with)."""
    return OptimizerSpec(
        learning_rate=learning_rate,
        num_steps=total_steps,
        warmup_steps=min(max(1, int(warmup_fraction * total_steps)), total_steps),
        lr_schedule="linear",
        weight_decay=weight_decay,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        grad_clip=1.0,
    )


def _batches(data: dict, batch_size: int, order: np.ndarray):
    """Fixed-shape batches (one compile); the last is padded with weight-0 rows."""
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(index) < batch_size:
            weights[len(index) :] = 0.0
            index = np.concatenate([index, np.zeros(batch_size - len(index), index.dtype)])
        yield {k: v[index] for k, v in data.items()}, weights


def finetune(
    pretrained: str,
    task: str,
    workdir: str,
    *,
    init: str = "pretrained",
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    warmup_fraction: float = 0.1,
    weight_decay: float = 0.01,
    max_len: int = 0,
    seed: int = 0,
    tokenizer: str = "",
    data_dir: str = "",
    pooling: str = "cls",
) -> dict:
    """Fine-tunes and returns {"dev/accuracy", "dev/majority_accuracy", ...}; see the module doc."""
    from mlm_jax.models.registry import classifier

    if init not in ("pretrained", "random"):
        raise ValueError(f"--init={init!r}: expected pretrained or random")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"--pooling={pooling!r}: expected cls or mean")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}: expected both >= 1")
    source = load_encoder(pretrained, tokenizer, weights=init == "pretrained")
    config, tok = source.spec, source.tokenizer
    max_len = int(max_len) or source.seq_len
    if max_len > config.max_position_embeddings:
        raise ValueError(f"max_len={max_len} exceeds max_position_embeddings")
    spec = load_task(task, data_dir)
    train_data, dev_data = encode(tok, spec.train, max_len), encode(tok, spec.dev, max_len)
    if pooling == "mean" and config.arch != "modernbert":
        raise ValueError("--pooling=mean: BERT pools [CLS] through its pooler (modernbert only)")
    model = classifier(config, spec.num_labels, pooling)
    params = _init_params(model, source, max_len, seed)

    steps_per_epoch = math.ceil(len(train_data["labels"]) / batch_size)
    total = steps_per_epoch * epochs
    tx, _ = make_optimizer(optimizer_spec(learning_rate, total, warmup_fraction, weight_decay))
    opt_state = tx.init(params)

    def loss_fn(params, batch, weights_B, key, deterministic):
        logits_BxC = model.apply(
            {"params": params},
            batch["tokens"],
            token_types=batch["token_types"],
            deterministic=deterministic,
            rngs={"dropout": key},
        )
        losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"])
        correct_B = (jnp.argmax(logits_BxC, -1) == batch["labels"]).astype(jnp.float32)
        n = jnp.maximum(weights_B.sum(), 1.0)
        return (losses_B * weights_B).sum() / n, (correct_B * weights_B).sum()

    @jax.jit
    def train_step(params, opt_state, batch, weights_B, key):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, weights_B, key, False
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_step(params, batch, weights_B):
        loss, correct = loss_fn(params, batch, weights_B, jax.random.key(0), True)
        return loss * weights_B.sum(), correct

    def evaluate(params) -> dict:
        loss_sum = correct = 0.0
        order = np.arange(len(dev_data["labels"]))
        for batch, weights in _batches(dev_data, batch_size, order):
            batch_loss, batch_correct = eval_step(params, batch, weights)
            loss_sum += float(batch_loss)
            correct += float(batch_correct)
        n = len(order)
        return {"dev/loss": loss_sum / n, "dev/accuracy": correct / n}

    metrics_path = files.join(workdir, "metrics.jsonl")  # local or gs://: rewritten whole
    lines = []
    files.write_text(metrics_path, "")
    dropout_key = jax.random.key(seed + 1)
    majority = float(np.mean(dev_data["labels"] == np.bincount(train_data["labels"]).argmax()))
    step = 0
    record = {}
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(train_data["labels"]))
        losses = []
        for batch, weights in _batches(train_data, batch_size, order):
            key = jax.random.fold_in(dropout_key, step)
            params, opt_state, loss = train_step(params, opt_state, batch, weights, key)
            losses.append(loss)
            step += 1
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train/loss": float(np.mean(jax.device_get(losses))),
            **evaluate(params),
        }
        lines.append(json.dumps(record) + "\n")
        files.write_text(metrics_path, "".join(lines))
        log.info(
            "epoch %d: train loss %.4f, dev loss %.4f, dev accuracy %.4f",
            epoch + 1,
            record["train/loss"],
            record["dev/loss"],
            record["dev/accuracy"],
        )
    result = {
        **record,
        "dev/majority_accuracy": majority,
        "pretrained": pretrained,
        "init": init,
        "task": task,
        "train_examples": len(train_data["labels"]),
        "dev_examples": len(dev_data["labels"]),
    }
    files.write_text(files.join(workdir, RESULT_FILE), json.dumps(result, indent=2))
    return result


def main(argv=None) -> None:

    from absl import app, flags
    from absl import logging as absl_logging

    flags.DEFINE_string("pretrained", "", "Run dir (checkpoints/) or HF BERT dir; '' = none.")
    flags.DEFINE_enum("init", "pretrained", ["pretrained", "random"], "random = baseline.")
    flags.DEFINE_string("task", None, "tsv:TRAIN,DEV or tfds:glue/<name>.")
    flags.DEFINE_string("workdir", None, "Output directory (metrics.jsonl, result.json).")
    flags.DEFINE_integer("epochs", 3, "Passes over the training set.")
    flags.DEFINE_integer("batch_size", 32, "Examples per step.")
    flags.DEFINE_float("learning_rate", 1e-4, "Peak Adam learning rate.")
    flags.DEFINE_float("warmup_fraction", 0.1, "Fraction of steps of linear warmup.")
    flags.DEFINE_integer("max_len", 0, "Tokens per example; 0 = the run's data.seq_len.")
    flags.DEFINE_integer("seed", 0, "Classifier init, dropout and data order.")
    flags.DEFINE_string("tokenizer", "", "Tokenizer path overriding the pretrained one.")
    flags.DEFINE_string("data_dir", "", "TFDS data dir for tfds: tasks.")
    flags.DEFINE_enum("pooling", "cls", ["cls", "mean"], "ModernBERT pooling: [CLS] or mean.")
    flags.mark_flags_as_required(["task", "workdir"])
    FLAGS = flags.FLAGS

    def run(argv):
        del argv
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("mlm_jax").setLevel(logging.INFO)
        with cli.one_line_errors():
            result = finetune(
                FLAGS.pretrained,
                FLAGS.task,
                FLAGS.workdir,
                init=FLAGS.init,
                epochs=FLAGS.epochs,
                batch_size=FLAGS.batch_size,
                learning_rate=FLAGS.learning_rate,
                warmup_fraction=FLAGS.warmup_fraction,
                max_len=FLAGS.max_len,
                seed=FLAGS.seed,
                tokenizer=FLAGS.tokenizer,
                data_dir=FLAGS.data_dir,
                pooling=FLAGS.pooling,
            )
        print(
            f"dev accuracy {result['dev/accuracy']:.4f} "
            f"(majority class {result['dev/majority_accuracy']:.4f})"
        )

    app.run(run, argv, flags_parser=cli.absl_flags_parser(__doc__, __name__))


if __name__ == "__main__":
    main()
