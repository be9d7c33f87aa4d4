"""WordPiece tokenizer: load a vocab.txt / tokenizer.json, or train one on a corpus.

A thin wrapper over Hugging Face `tokenizers` that exposes the ids the rest of the code needs
([PAD] [CLS] [SEP] [MASK] [UNK]) and returns word starts next to ids, so whole-word masking
never has to re-derive them. Encoding is batched (`encode_batch` runs on all cores).

Its command (`__main__.py`) trains a vocabulary on the train split of a corpus, once:

    python -m mlm_jax.data.tokenizer --dataset=python_docs --vocab_size=8192 --out=/tmp/tok
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from mlm_jax import files

log = logging.getLogger(__name__)

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Beside a vocabulary this project trained: what it was trained on (dataset, held-out fraction),
# so a run can tell when its vocabulary has seen the documents it evaluates on.
TRAINED_ON = "mlm_jax_trained_on.json"


class Tokenizer:
    """Ids of the special tokens plus batched encoding with word starts."""

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        lowercase: bool | None = None,
        trained_on: dict | None = None,
    ):
        hf.no_truncation()  # a shipped tokenizer.json may truncate/pad to 128; packing cuts rows
        hf.no_padding()
        self.hf = hf
        self.lowercase = lowercase
        self.trained_on = trained_on  # {"dataset", "heldout_fraction", "corpus"} if we trained it
        vocab = hf.get_vocab(with_added_tokens=True)
        missing = [t for t in BERT_SPECIALS if t not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer lacks the special tokens {missing}; expected BERT's {BERT_SPECIALS}"
            )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in BERT_SPECIALS
        )
        added_special = [i for i, t in hf.get_added_tokens_decoder().items() if t.special]
        self.special_ids = tuple(sorted({vocab[t] for t in BERT_SPECIALS} | set(added_special)))
        # Largest id + 1, not the count: a vocab.txt with a repeated line leaves an unused id.
        self.vocab_size = max(vocab.values()) + 1
        model = hf.model
        if isinstance(model, models.WordPiece):
            # A piece that carries the continuation prefix ("##") does not start a word.
            prefix = model.continuing_subword_prefix
            continues = np.zeros(self.vocab_size, bool)
            for token, i in vocab.items():
                continues[i] = token.startswith(prefix) and len(token) > len(prefix)
            self._starts_word_V = ~continues
        else:
            self._starts_word_V = None  # fall back to encoding.word_ids
        self._is_special_V = np.zeros(self.vocab_size, bool)
        self._is_special_V[list(self.special_ids)] = True

    @property
    def is_special_V(self) -> np.ndarray:
        """Bool lookup table over the vocabulary: True for special tokens."""
        return self._is_special_V

    def encode_arrays(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int32 [n], word_starts bool [n]) per text, without [CLS]/[SEP]."""
        encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for enc in encodings:
            ids = np.asarray(enc.ids, np.int32)
            if self._starts_word_V is not None:
                starts = self._starts_word_V[ids]
            else:
                word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids], np.int64)
                starts = np.diff(word_ids, prepend=-2) != 0
            out.append((ids, starts & ~self._is_special_V[ids]))
        return out

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
        """(ids, word_starts) per text as Python lists, without [CLS]/[SEP]."""
        return [(ids.tolist(), starts.tolist()) for ids, starts in self.encode_arrays(texts)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self.hf.id_to_token(int(i))

    def token_to_id(self, s: str) -> int:
        i = self.hf.token_to_id(s)
        if i is None:
            raise ValueError(f"token {s!r} is not in the vocabulary")
        return i

    def fingerprint(self) -> str:
        """A short hash of the full tokenizer definition (names caches of tokenized corpora)."""
        import hashlib

        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]

    def save(self, directory: str) -> None:
        """Writes the files transformers' AutoTokenizer.from_pretrained(directory) loads."""
        os.makedirs(directory, exist_ok=True)
        self.hf.save(os.path.join(directory, "tokenizer.json"))
        is_wordpiece = self._starts_word_V is not None
        if is_wordpiece:
            by_id = {i: token for token, i in self.hf.get_vocab(with_added_tokens=True).items()}
            # Line = id; an id no token has (a repeated line in the vocab.txt this came from)
            # keeps its line with a placeholder, so the ids after it stay put.
            lines = (by_id.get(i, f"[unused_id_{i}]") for i in range(self.vocab_size))
            with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
                f.writelines(token + "\n" for token in lines)
        specials = dict(
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        config = dict(
            tokenizer_class="BertTokenizer" if is_wordpiece else "PreTrainedTokenizerFast",
            do_lower_case=bool(self.lowercase) if self.lowercase is not None else True,
            model_max_length=512,
            **specials,
        )
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
            json.dump(specials, f, indent=2)
        if self.trained_on is not None:
            with open(os.path.join(directory, TRAINED_ON), "w") as f:
                json.dump(self.trained_on, f, indent=2, sort_keys=True)

    def same_vocabulary(self, other: Tokenizer) -> bool:
        """Whether both map every piece to the same id and normalise text alike."""
        return (
            self.hf.get_vocab(with_added_tokens=True) == other.hf.get_vocab(with_added_tokens=True)
            and self.lowercase == other.lowercase
        )


def _bert_pipeline(
    hf: tokenizers.Tokenizer, *, lowercase: bool, strip_accents: bool | None
) -> None:
    """The normalizer, pre-tokenizer, decoder and [CLS]/[SEP] template of BERT (as in HF)."""
    hf.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        hf.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )


def _lowercase_from_config_file(directory: str) -> bool:
    """do_lower_case from a tokenizer_config.json beside vocab.txt; BERT's default (True) without."""
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return bool(json.load(f).get("do_lower_case", True))
    return True


def load_tokenizer(path: str) -> Tokenizer:
    """path: a vocab.txt, a tokenizer.json, or a directory holding one (tokenizer.json preferred).

    A gs:// path is read through a temporary local copy of the files that matter.
    """
    if files.is_remote(path):
        if not files.exists(path):
            raise ValueError(f"data.tokenizer={path!r}: no such file or folder")
        folder, name = (path, "") if files.isdir(path) else path.rstrip("/").rsplit("/", 1)
        wanted = (name,) if name else ("tokenizer.json", "vocab.txt")
        with files.local_copy(
            folder, names=wanted + ("tokenizer_config.json", TRAINED_ON)
        ) as local:
            return load_tokenizer(os.path.join(local, name))
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        for name in ("tokenizer.json", "vocab.txt"):
            if os.path.exists(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise ValueError(
            f"data.tokenizer={path!r}: directory holds neither tokenizer.json nor vocab.txt"
        )
    if not os.path.exists(path):
        raise ValueError(
            f"data.tokenizer={path!r}: no such file (expected a vocab.txt or tokenizer.json)"
        )
    tokenizer = _read(path)
    trained_on = os.path.join(os.path.dirname(path), TRAINED_ON)
    if os.path.exists(trained_on):
        with open(trained_on) as f:
            tokenizer.trained_on = json.load(f)
    return tokenizer


def _read(path: str) -> Tokenizer:
    """A tokenizer.json or vocab.txt file; one ValueError naming the file if it is not one."""
    if path.endswith(".json"):
        try:
            hf = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises its own exception for a malformed file
            detail = " ".join(str(e).split())[:200]
            raise ValueError(f"{path}: not a readable tokenizer.json ({detail})") from None
        lowercase = None
        norm = json.loads(hf.to_str()).get("normalizer") or {}
        if "lowercase" in norm:
            lowercase = bool(norm["lowercase"])
        return Tokenizer(hf, lowercase=lowercase)
    # vocab.txt: rebuild what transformers' BertTokenizerFast(vocab_file) builds.
    lowercase = _lowercase_from_config_file(os.path.dirname(path))
    vocab = {}
    try:
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                # A token's id is its line, so it indexes the checkpoint's embedding rows; a
                # repeated token takes its last line (both as transformers' BertTokenizer reads it).
                vocab[line.rstrip("\n")] = index
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not a vocab.txt (not UTF-8 text at byte {e.start}); expected one token per line"
        ) from None
    if not vocab:
        raise ValueError(f"data.tokenizer={path!r}: empty vocabulary file")
    hf = tokenizers.Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    # As in transformers: specials are matched whole in the text ("Paris is the [MASK] ...").
    hf.add_special_tokens(
        [tokenizers.AddedToken(t, special=True) for t in BERT_SPECIALS if t in vocab]
    )
    _bert_pipeline(hf, lowercase=lowercase, strip_accents=None)
    return Tokenizer(hf, lowercase=lowercase)


def train_wordpiece(texts: Iterable[str], *, vocab_size: int, lowercase: bool) -> Tokenizer:
    """Trains a BERT-style WordPiece vocabulary (specials first: [PAD]=0 [UNK] [CLS] [SEP] [MASK]).

    The same texts give byte-identical files on every machine and thread count. tokenizers'
    WordPieceTrainer does not (its issue #1794): it is BPE training whose "##" pieces get ids in
    hash-map order, and the merge order breaks ties between equal counts by id, so two runs
    pick different merges. Here every word-internal character c is first spelt as its own code
    point in a private-use plane (`_continuation`), so every starting piece is in the alphabet
    the trainer sorts, the same BPE merges run with ids that do not depend on hash order, and the
    pieces are spelt back with "##" afterwards: the WordPiece vocabulary WordPieceTrainer would
    make with ties broken by character order.
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words_per_text = []
    alphabet: set[str] = set()
    for text in texts:
        words = [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        words = [w for w in (_without_private_planes(w) for w in words) if w]
        alphabet.update(*words)
        words_per_text.append(words)
    spell = {ord(c): _continuation(c) for c in alphabet}
    spelt = (" ".join(w[0] + w[1:].translate(spell) for w in words) for words in words_per_text)

    bpe = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(BERT_SPECIALS),
        initial_alphabet=sorted(alphabet),  # every character may start a word, as in WordPiece
        show_progress=False,
    )
    bpe.train_from_iterator(spelt, trainer=trainer)
    unspell = {ord(_continuation(c)): c for c in alphabet}
    vocab = {}
    for piece, index in bpe.get_vocab(with_added_tokens=True).items():
        if piece not in BERT_SPECIALS and _is_continuation(piece[0]):
            piece = "##" + piece.translate(unspell)
        else:
            piece = piece.translate(unspell)
        vocab[piece] = index
    hf = tokenizers.Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    hf.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in BERT_SPECIALS])
    _bert_pipeline(hf, lowercase=lowercase, strip_accents=lowercase)
    if len(vocab) < vocab_size:
        log.warning(
            "the corpus gave a %d-token vocabulary, not the %d asked (vocab_size): it holds too "
            "few distinct pieces seen twice; the model's vocabulary is %d tokens",
            len(vocab), vocab_size, len(vocab),
        )  # fmt: skip
    return Tokenizer(hf, lowercase=lowercase)


# Word-internal characters are spelt in Unicode's private-use planes 15 and 16 while training:
# Basic Multilingual Plane characters in plane 15, plane-1 characters (emoji, ...) in plane 16.
# Higher planes are CJK (split into one-character words by the normalizer) and rarer scripts,
# which keep their own code point; characters of planes 15 and 16 themselves are not trained on.
_PLANE_15, _PLANE_16 = 0xF0000, 0x100000


def _continuation(c: str) -> str:
    code = ord(c)
    if code < 0x10000:
        return chr(_PLANE_15 + code)
    if code < 0x20000:
        return chr(_PLANE_16 + code - 0x10000)
    return c


def _is_continuation(c: str) -> bool:
    return ord(c) >= _PLANE_15


def _without_private_planes(word: str) -> str:
    return "".join(c for c in word if ord(c) < _PLANE_15) if max(word) >= "\U000f0000" else word
