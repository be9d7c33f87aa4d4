"""Fine-tuning itself: BERT's AdamW recipe, fixed-shape batches, one jitted step, dev scores
after every epoch; `finetune` ties the package together (see mlm_jax/finetune.py for the user's
view)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlm_jax.finetuning import metrics, model, outputs
from mlm_jax.finetuning.encoding import encode
from mlm_jax.finetuning.tasks import check_spec, load_task
from mlm_jax.training.optim import OptimizerSpec, make_optimizer

log = logging.getLogger("mlm_jax.finetune")


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


def batches(data: dict, batch_size: int, order: np.ndarray):
    """Fixed-shape batches (one compile); the last is padded with weight-0 rows."""
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(index) < batch_size:
            weights[len(index) :] = 0.0
            index = np.concatenate([index, np.zeros(batch_size - len(index), index.dtype)])
        yield {k: v[index] for k, v in data.items()}, weights


@dataclasses.dataclass
class Steps:
    """The jitted train and eval steps of one classifier and optimizer."""

    train: Callable  # (params, opt_state, batch, weights_B, key) -> (params, opt_state, loss)
    eval: Callable  # (params, batch, weights_B) -> (summed loss, predictions_B)


def make_steps(classifier, tx) -> Steps:
    def loss_and_logits(params, batch, weights_B, key, deterministic):
        logits_BxC = classifier.apply(
            {"params": params},
            batch["tokens"],
            token_types=batch["token_types"],
            deterministic=deterministic,
            rngs={"dropout": key},
        )
        losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"])
        return (losses_B * weights_B).sum() / jnp.maximum(weights_B.sum(), 1.0), logits_BxC

    @jax.jit
    def train_step(params, opt_state, batch, weights_B, key):
        (loss, _), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
            params, batch, weights_B, key, False
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_step(params, batch, weights_B):
        loss, logits_BxC = loss_and_logits(params, batch, weights_B, jax.random.key(0), True)
        return loss * weights_B.sum(), jnp.argmax(logits_BxC, -1)

    return Steps(train_step, eval_step)


def evaluate(steps: Steps, params, dev: dict, batch_size: int, num_labels: int) -> dict:
    """dev/loss and the dev scores (metrics.scores) over the whole dev set."""
    n = len(dev["labels"])
    loss_sum, predictions = 0.0, []
    for batch, weights in batches(dev, batch_size, np.arange(n)):
        batch_loss, predicted_B = steps.eval(params, batch, weights)
        loss_sum += float(batch_loss)
        predictions.append(np.asarray(predicted_B)[weights > 0])
    scores = metrics.scores(dev["labels"], np.concatenate(predictions), num_labels)
    return {"dev/loss": loss_sum / n, **{f"dev/{k}": v for k, v in scores.items()}}


def train_epoch(steps: Steps, state: tuple, train: dict, batch_size: int, key, epoch: int, seed):
    """One pass in this epoch's order; returns ((params, opt_state, step), mean train loss)."""
    params, opt_state, step = state
    order = np.random.default_rng([seed, epoch]).permutation(len(train["labels"]))
    losses = []
    for batch, weights in batches(train, batch_size, order):
        params, opt_state, loss = steps.train(
            params, opt_state, batch, weights, jax.random.fold_in(key, step)
        )
        losses.append(loss)
        step += 1
    return (params, opt_state, step), float(np.mean(jax.device_get(losses)))


def _check_arguments(init: str, pooling: str, epochs: int, batch_size: int, task: str) -> None:
    if init not in ("pretrained", "random"):
        raise ValueError(f"--init={init!r}: expected pretrained or random")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"--pooling={pooling!r}: expected cls or mean")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}: expected both >= 1")
    check_spec(task)


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
    """Fine-tunes and returns the last epoch's record plus {"dev/majority_accuracy", ...}; writes
    workdir/metrics.jsonl and workdir/result.json (outputs)."""
    _check_arguments(init, pooling, epochs, batch_size, task)
    outputs.check_owned(workdir)  # before anything loads: a refused folder costs nothing
    spec = load_task(task, data_dir, pretrained)  # (bad task files: before the weights load)
    source = model.load_encoder(pretrained, tokenizer, weights=init == "pretrained")
    max_len = int(max_len) or source.seq_len
    if max_len > source.spec.max_position_embeddings:
        raise ValueError(f"max_len={max_len} exceeds max_position_embeddings")
    train = encode(source.tokenizer, spec.train, max_len)
    dev = encode(source.tokenizer, spec.dev, max_len)
    classifier = model.classifier(source.spec, spec.num_labels, pooling)
    params = model.init_params(classifier, source, max_len, seed)
    total = math.ceil(len(train["labels"]) / batch_size) * epochs
    tx, _ = make_optimizer(optimizer_spec(learning_rate, total, warmup_fraction, weight_decay))
    steps = make_steps(classifier, tx)

    outputs.claim(workdir)
    state, records, dropout_key = (params, tx.init(params), 0), [], jax.random.key(seed + 1)
    for epoch in range(epochs):
        state, train_loss = train_epoch(steps, state, train, batch_size, dropout_key, epoch, seed)
        scores = evaluate(steps, state[0], dev, batch_size, spec.num_labels)
        records.append({"epoch": epoch + 1, "step": state[2], "train/loss": train_loss, **scores})
        outputs.write_epochs(workdir, records)
        log.info("epoch %d: train loss %.4f, %s", epoch + 1, train_loss, _said(scores))
    majority = np.bincount(train["labels"], minlength=spec.num_labels).argmax()
    result = {
        **records[-1],
        "dev/majority_accuracy": float(np.mean(dev["labels"] == majority)),
        "pretrained": pretrained,
        "init": init,
        "task": task,
        "seed": seed,
        "labels": spec.label_names,  # class i is labels[i]; F1 is of class 1
        "train_examples": len(train["labels"]),
        "dev_examples": len(dev["labels"]),
    }
    outputs.write_result(workdir, result)
    return result


def _said(scores: dict) -> str:
    return ", ".join(f"{k.replace('/', ' ')} {v:.4f}" for k, v in scores.items())
