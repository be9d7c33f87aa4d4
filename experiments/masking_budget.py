"""What the masking rules select, measured on synthetic rows (docs/experiments.md quotes it).

    python -m experiments.masking_budget    # from the checkout: it reuses the tests' row makers

It needs the test requirements (`pip install -r requirements-test.txt`), as the tests it reuses do.

Rows of 128 tokens: [CLS], words of 1-6 pieces (uniform), [SEP]; 4,096 full rows and 4,096 of
20-126 tokens. For whole_word and span at 0.15 and 0.4 it prints the selected token fraction with
its standard error, and a word's chance of selection by its length in pieces; for span, on rows
of one-piece words, the mean masked run (in words) of tiled and anchored spans at 0.15 and 0.3
and how often a multi-word run mixes [MASK]/random/keep with per-token and per-span draws.
"""

from __future__ import annotations

import jax
import numpy as np

from mlm_jax import cli
from mlm_jax.masking.schedule import as_exact_ratio

try:
    from tests.test_masking_budget import _jit_mask, selected_BxL, spec_for, synthetic_rows
    from tests.test_masking_spans import one_piece_rows, run_lengths
except ModuleNotFoundError as missing:  # the tests' own packages (requirements-test.txt)
    if __name__ != "__main__":
        raise
    cli.fail(cli.missing_package(missing.name, cli.TEST_REQUIREMENTS, "experiments.masking_budget"))

ROWS, L = 4096, 128


def budgets() -> None:
    rng = np.random.default_rng(0)
    for kind in ("full", "short"):
        tokens, maskable, starts, word_len = synthetic_rows(rng, ROWS, L, variable=kind == "short")
        for strategy in ("whole_word", "span"):
            for ratio in (0.15, 0.4):
                spec = spec_for(strategy=strategy, ratio=ratio)
                out = _jit_mask(jax.random.key(1), tokens, maskable, starts,
                                ratio=as_exact_ratio(ratio), spec=spec)  # fmt: skip
                sel = selected_BxL(out, L)
                n = np.asarray(out.num_maskable, np.float64)
                chosen = np.asarray(out.num_selected, np.float64)
                se = (chosen - ratio * n).std(ddof=1) / np.sqrt(len(n)) / n.mean()
                chance = " ".join(f"{sel[word_len == w].mean():.3f}" for w in range(1, 7))
                print(f"{kind:5s} {strategy:10s} ratio {ratio}: fraction "
                      f"{chosen.sum() / n.sum():.4f} (se {se:.5f}); by pieces 1-6: {chance}")  # fmt: skip


def spans() -> None:
    tokens, maskable, starts = one_piece_rows()
    for sampling in ("tile", "anchored"):
        for replacement in ("token", "span"):
            for ratio in (0.15, 0.3):
                spec = spec_for(strategy="span", ratio=ratio, span_sampling=sampling,
                                span_replacement=replacement)  # fmt: skip
                out = _jit_mask(jax.random.key(1), tokens, maskable, starts,
                                ratio=as_exact_ratio(ratio), spec=spec)  # fmt: skip
                sel, inputs = selected_BxL(out, tokens.shape[1]), np.asarray(out.inputs)
                outcome = np.where(inputs == 4, 0, np.where(inputs != tokens, 1, 2))
                padded = np.pad(sel, ((0, 0), (1, 1))).astype(np.int8)
                begins = np.argwhere(np.diff(padded, axis=1) == 1)
                ends = np.argwhere(np.diff(padded, axis=1) == -1)
                mixed = [len(set(outcome[r, b:e])) > 1
                         for (r, b), (_, e) in zip(begins, ends) if e - b >= 2]  # fmt: skip
                print(f"span {sampling:8s} {replacement:5s} ratio {ratio}: mean run "
                      f"{run_lengths(sel).mean():.2f} words, runs mixing outcomes "
                      f"{np.mean(mixed):.3f}")  # fmt: skip


if __name__ == "__main__":
    cli.help_if_asked(__doc__)
    budgets()
    spans()
