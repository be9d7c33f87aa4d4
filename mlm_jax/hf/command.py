"""`python -m mlm_jax.hf`: check a Hugging Face BERT or ModernBERT directory, or export a run.

    python -m mlm_jax.hf import DIR                      # check DIR, print the config flags
    python -m mlm_jax.hf export --workdir=W --out_dir=D  # latest checkpoint of a run -> D

The export is a BertForMaskedLM or, for model.arch=modernbert, a ModernBertForMaskedLM
directory (hf/directories.py writes it) that transformers loads
as it is; reading either kind of directory is training/pretrained.py's.
"""

from __future__ import annotations

import argparse
import os

import jax

from mlm_jax import cli
from mlm_jax.hf import directories as hf_dir
from mlm_jax.hf import export_dir, model_card
from mlm_jax.training import checkpoint, metrics, pretrained


def export_workdir(workdir: str, out_dir: str) -> None:
    """Exports the latest checkpoint of a training run (with the run's tokenizer)."""
    if not pretrained.is_run_dir(workdir):
        raise ValueError(f"--workdir={workdir!r}: no checkpoints/ there (not a training run)")
    export_dir.check_out_dir(out_dir)  # before reading the checkpoint: refused at once
    model = pretrained.load(workdir)
    num_params = sum(x.size for x in jax.tree.leaves(model.params))
    step, events = checkpoint.latest_step(workdir), metrics.read_metrics(workdir)
    card = model_card.run_card(workdir, step, num_params, events)
    hf_dir.export_hf(model.params, model.spec, model.tokenizer, out_dir, card=card)


# ----------------------------------------------------------------------------- CLI


def _print_import_flags(directory: str) -> None:
    if pretrained.is_run_dir(directory):
        raise ValueError(f"{directory}: a run directory of this project, not a HF checkpoint")
    model = pretrained.load(directory, tokenizer=None)
    hf_config = hf_dir.read_config(directory)
    overrides = hf_dir.family(hf_config).model_overrides(hf_config)
    count = sum(x.size for x in jax.tree.leaves(model.params))
    flags = [f"--config.model.init_from={directory}"]
    flags += [f"--config.model.{k}={v}" for k, v in overrides.items()]
    try:
        folder = hf_dir.tokenizer_dir(directory)
    except ValueError:
        folder = None  # no tokenizer beside the weights: the run names its own
    if folder:
        name = (
            "tokenizer.json"
            if os.path.exists(os.path.join(folder, "tokenizer.json"))
            else "vocab.txt"
        )
        flags.append(f"--config.data.tokenizer={os.path.join(folder, name)}")
    family = model.spec.family.title
    print(f"{directory}: {family} with {count:,} parameters; start a run from it with")
    print("  " + " \\\n  ".join(flags))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlm_jax.hf", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import", help="check a HF (Modern)BERT directory and print the flags to start from it"
    )
    imp.add_argument("directory")
    exp = sub.add_parser(
        "export", help="export a run's latest checkpoint as a HF (ModernBert|Bert)ForMaskedLM"
    )
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        if args.command == "import":
            _print_import_flags(args.directory)
        else:
            export_workdir(args.workdir, args.out_dir)
            print(f"wrote {args.out_dir} (a MaskedLM directory + tokenizer)")
