"""Benchmark: does MLM pretraining on python_docs help a downstream task? Real vs shuffled words.

    python experiments/finetune_python_docs.py --pretrained=RUN_DIR --out=DIR [--task=same_doc]

Writes the built-in corpus's task (mlm_jax/finetuning/python_docs.py says how it is built: dev
text from the run's own held-out documents, none of it seen in pretraining) to DIR/task as
`tsv:` files, then fine-tunes the run's encoder and, as the baseline, the same architecture from
random initialisation, and prints both with the majority-class accuracy. `order`: a sentence as
written or with its words shuffled; `same_doc`: are two sentences from one document?

The same tasks need no files elsewhere: `--task=python_docs:order` in `python -m
mlm_jax.finetune`, and `--finetune_task=python_docs:order --finetune_task=python_docs:same_doc`
in experiments/sweep.py.
"""

from __future__ import annotations

import argparse
import json
import os

from mlm_jax.finetuning import python_docs


def build_task(
    task_dir: str,
    *,
    kind: str = "order",
    heldout_fraction: float = 0.05,
    num_train: int = 2000,
    num_dev: int = 500,
    seed: int = 0,
) -> str:
    """Writes train.tsv and dev.tsv (mlm_jax.finetuning.python_docs.task_rows); returns the
    `tsv:TRAIN,DEV` task spec."""
    rows = python_docs.task_rows(kind, heldout_fraction, num_train, num_dev, seed)
    os.makedirs(task_dir, exist_ok=True)
    paths = []
    for name, split_rows in zip(("train", "dev"), rows):
        path = os.path.join(task_dir, f"{name}.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines("\t".join(row) + "\n" for row in split_rows)
        paths.append(path)
    return "tsv:" + ",".join(paths)


def _heldout_fraction(run_dir: str) -> float:
    """The run's own data.heldout_fraction: its held-out documents are the dev documents."""
    try:
        return python_docs.heldout_fraction(run_dir)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a finished run directory")
    parser.add_argument("--out", required=True, help="where the task and results go")
    parser.add_argument(
        "--task",
        choices=("order", "same_doc"),
        default="order",
        help="order: real vs word-shuffled sentence; same_doc: are two sentences from one document",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_len", type=int, default=64, help="tokens per sentence")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_dev", type=int, default=500)
    args = parser.parse_args()

    import logging

    from mlm_jax import finetune

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlm_jax").setLevel(logging.INFO)
    task = build_task(
        os.path.join(args.out, "task"),
        kind=args.task,
        heldout_fraction=_heldout_fraction(args.pretrained),
        num_train=args.num_train,
        num_dev=args.num_dev,
    )
    results = {}
    for init in ("pretrained", "random"):
        results[init] = finetune.finetune(
            args.pretrained,
            task,
            os.path.join(args.out, init),
            init=init,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            max_len=args.max_len,
        )
    summary = {
        "task": task,
        "train_examples": results["pretrained"]["train_examples"],
        "dev_examples": results["pretrained"]["dev_examples"],
        "majority_accuracy": results["pretrained"]["dev/majority_accuracy"],
        "pretrained_accuracy": results["pretrained"]["dev/accuracy"],
        "random_init_accuracy": results["random"]["dev/accuracy"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
