"""`python -m mlm_jax.data.tokenizer`: train a WordPiece vocabulary on a corpus's train split.

The command lives apart from the tokenizer library (this package's __init__) because it reads
corpora through the loader, and the loader itself needs the library.
"""

from __future__ import annotations

import argparse

from mlm_jax import cli, files, new_output
from mlm_jax.config.defaults import base_config
from mlm_jax.data import loader
from mlm_jax.data.spec import DataSpec


def main(argv=None) -> None:
    defaults = base_config().data

    parser = argparse.ArgumentParser(
        prog="python -m mlm_jax.data.tokenizer",
        description="Train a WordPiece vocabulary on a corpus's train split.",
    )
    parser.add_argument(
        "--dataset",
        default="python_docs",
        help="python_docs | text:<glob> | parquet:<glob> | tfds:<name>[:<feature>]",
    )
    parser.add_argument("--vocab_size", type=int, default=defaults.vocab_size)
    parser.add_argument(
        "--out", required=True, help="directory to write vocab.txt, tokenizer.json, ..."
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--text_unit", default=defaults.text_unit)
    parser.add_argument(
        "--text_field", default=defaults.text_field, help="JSONL records' field, Parquet column"
    )
    parser.add_argument(
        "--heldout_fraction",
        type=float,
        default=defaults.heldout_fraction,
        help="documents held out from training, as the runs hold them out (default: the "
        f"configs' data.heldout_fraction, {defaults.heldout_fraction})",
    )
    parser.add_argument("--cased", action="store_true", help="keep case and accents")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        new_output.check_new(args.out)  # before training: never over the user's files
        data = DataSpec.from_config(
            defaults,
            dataset=args.dataset,
            data_dir=args.data_dir,
            text_unit=args.text_unit,
            text_field=args.text_field,
            heldout_fraction=args.heldout_fraction,
            vocab_size=args.vocab_size,
            lowercase=not args.cased,
        )
        tokenizer = loader.train_tokenizer(data)
        new_output.check_new(args.out)  # again: training took a while
        with files.new_local_dir(args.out) as tmp:  # whole or not at all
            tokenizer.save(tmp)
    print(f"wrote a {tokenizer.vocab_size}-token WordPiece vocabulary to {args.out}")


if __name__ == "__main__":
    main()
