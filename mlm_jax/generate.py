"""Text from a trained model by iterative unmasking, as masked diffusion language models sample.

python -m mlm_jax.generate --workdir=/tmp/mlm_tiny --prompt="The file" --length=24 --steps=24
python -m mlm_jax.generate --hf_dir=path/to/bert --length=16 --steps=8 --remasking=low_confidence

The row `[CLS] prompt [MASK] x length [SEP]` is filled over --steps steps (a [MASK] in the
prompt is filled too). --remasking=none (default): MDLM's ancestral sampler, which unmasks each
masked position from time t to s with probability (t - s)/t and never remasks; low_confidence:
LLaDA's, which commits the most confident predictions, length // steps per step (the first
length % steps steps one more), the others masked again; random: the same with random picks.
Tokens are drawn at --temperature (0: the most likely). Special tokens are never written. The
same seed gives the same text; --num_samples rows each have their own draw (row k is the same
whatever the number of rows). Prints one line per sample: the prompt and what was filled in.
"""

from __future__ import annotations

import argparse
import sys

from mlm_jax import cli
from mlm_jax.generation import samplers
from mlm_jax.generation.text import check_arguments, generate
from mlm_jax.training import pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlm_jax.generate", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's workdir (latest checkpoint)")
    source.add_argument("--hf_dir", help="a Hugging Face BERT or ModernBERT directory")
    parser.add_argument("--prompt", default="", help="text before the generated tokens")
    parser.add_argument("--length", type=int, default=32, help="tokens to generate")
    parser.add_argument("--steps", type=int, default=32, help="model calls (unmasking steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remasking", choices=samplers.REMASKINGS, default="none")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: the most likely")
    parser.add_argument("--num_samples", type=int, default=1)
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        check_arguments(
            args.length, args.steps, args.num_samples, args.temperature, args.remasking
        )  # before the weights load
        model = pretrained.load_mlm(args.workdir, args.hf_dir)
        rows = generate(
            model,
            prompt=args.prompt,
            length=args.length,
            steps=args.steps,
            seed=args.seed,
            remasking=args.remasking,
            temperature=args.temperature,
            num_samples=args.num_samples,
        )
    for row in rows:
        print(model.tokenizer.decode(row, skip_special_tokens=True))


if __name__ == "__main__":
    main(sys.argv[1:])
