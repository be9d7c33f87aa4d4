r"""Preset sweep for the headline question: which masking ratio, with which replacement split?

    python experiments/masking_ratio.py --workdir=DIR [--config=configs/tiny.py] \
        [--sweep=seed=0,1] [--config.train.num_steps=300] [any experiments/sweep.py flag]

Sweeps masking.ratio over 0.15, 0.3, 0.4, 0.6, 0.8 (Devlin et al.'s 15%; MosaicBERT and
ModernBERT's 30%; Wettig et al.'s 40%, and beyond) crossed with BERT's 80/10/10 replacement
split and 100/0/0 (every selected token becomes [MASK]), which Wettig et al. found as good or
better. Every run is also evaluated at the common eval.mask_ratio (0.15), so the columns
compare. Extra `--sweep` axes (e.g. seeds) are added to the preset's; everything else is
experiments/sweep.py.
"""

from __future__ import annotations

import os
import sys

from absl import app

from experiments import sweep
from mlm_jax import cli

RATIOS = "0.15,0.3,0.4,0.6,0.8"
SPLITS = "0.8/0.1,1.0/0.0"  # (mask_prob/random_prob): 80/10/10 and 100/0/0
PRESET = [
    f"--sweep=masking.ratio={RATIOS}",
    f"--sweep=masking.mask_prob/masking.random_prob={SPLITS}",
]
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"
)


def preset_argv(argv: list[str]) -> list[str]:
    """argv with the preset's axes and, unless given, the tiny config."""
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv[1:])
    extra = [] if has_config else [f"--config={DEFAULT_CONFIG}"]
    return [argv[0], *extra, *PRESET, *argv[1:]]


if __name__ == "__main__":
    sys.argv = preset_argv(sys.argv)
    sweep.define_flags()
    app.run(sweep.main, flags_parser=cli.absl_flags_parser(__doc__, "experiments.sweep"))
