"""data/packing.py on its own: documents -> a token stream cached on disk -> rows, against a
plain-Python packer written here from the module's description (concat and pad), with a stub
tokenizer whose ids are easy to read: word w of a document is token 10 + w, words of two
pieces (an "x" in them) give a start and a continuation.
"""

import numpy as np
import pytest

from mlm_jax.data import packing

CLS, SEP, PAD, UNK = 1, 2, 0, 3


class StubTokenizer:
    cls_id, sep_id, pad_id = CLS, SEP, PAD
    vocab_size = 1000
    is_special_V = np.zeros(vocab_size, bool)
    is_special_V[[CLS, SEP, PAD, UNK]] = True

    def __init__(self):
        self.calls = 0

    def encode_arrays(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            ids, starts = [], []
            for word in text.split():
                number = int(word.strip("x"))
                pieces = [10 + number] + ([500 + number] if "x" in word else [])
                ids += pieces
                starts += [True] + [False] * (len(pieces) - 1)
            out.append((np.asarray(ids, np.int32), np.asarray(starts, bool)))
        return out


class Docs(list):
    def get_batch(self, indices):
        return [self[int(i)] for i in indices]


DOCS = Docs(["1 2 3x 4", "5", "6x 7 8 9 10 11 12 13 14 15 16 17", "18 19x", "20 21 22"])


def reference_stream(docs):
    """[(token, word start, document index)] of the documents, [SEP] after each."""
    stream = []
    for d, (ids, starts) in enumerate(StubTokenizer().encode_arrays(docs)):
        stream += [(int(t), bool(s), d) for t, s in zip(ids, starts)] + [(SEP, False, d)]
    return stream


def reference_concat_row(stream, r, seq_len):
    body = stream[r * (seq_len - 1) : (r + 1) * (seq_len - 1)]
    tokens = [CLS] + [t for t, _, _ in body] + [PAD] * (seq_len - 1 - len(body))
    starts = [False] + [s for _, s, _ in body] + [False] * (seq_len - 1 - len(body))
    first = body[0][2]
    doc_ids = [1] + [d - first + 1 for _, _, d in body] + [0] * (seq_len - 1 - len(body))
    return tokens, doc_ids, starts


def reference_pad_row(docs, r, seq_len):
    ids, starts = StubTokenizer().encode_arrays([docs[r]])[0]
    n = min(len(ids), seq_len - 2)
    tokens = [CLS] + list(ids[:n]) + [SEP] + [PAD] * (seq_len - 2 - n)
    word_starts = [False] + list(starts[:n]) + [False] * (seq_len - 1 - n)
    doc_ids = [1] * (n + 2) + [0] * (seq_len - 2 - n)
    return tokens, doc_ids, word_starts


@pytest.fixture
def stream(tmp_path):
    return packing.tokenize_to_stream(DOCS, StubTokenizer(), str(tmp_path / "cache"), batch_docs=2)


def test_the_stream_is_the_documents_each_followed_by_sep(stream):
    expected = reference_stream(DOCS)
    assert stream.tokens.tolist() == [t for t, _, _ in expected]
    assert stream.word_starts.tolist() == [s for _, s, _ in expected]
    assert stream.num_documents == len(DOCS)
    lengths = [sum(1 for *_, d in expected if d == i) for i in range(len(DOCS))]
    assert stream.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert stream.tokens.dtype == np.uint16  # 1000 ids fit
    assert stream.unit_starts is None


def test_the_stream_is_tokenized_once_and_then_read_from_disk(tmp_path):
    tokenizer = StubTokenizer()
    first = packing.tokenize_to_stream(DOCS, tokenizer, str(tmp_path / "c"), batch_docs=2)
    calls = tokenizer.calls
    assert calls == 3  # 5 documents, 2 a batch
    again = packing.tokenize_to_stream(DOCS, tokenizer, str(tmp_path / "c"), batch_docs=2)
    assert tokenizer.calls == calls
    np.testing.assert_array_equal(again.tokens, first.tokens)
    np.testing.assert_array_equal(again.offsets, first.offsets)


@pytest.mark.parametrize("seq_len", [4, 5, 8])
def test_concat_rows_cut_the_stream_and_number_documents_within_a_row(stream, seq_len):
    rows = packing.PackedRows(stream, seq_len=seq_len, packing="concat", tokenizer=StubTokenizer())
    reference = reference_stream(DOCS)
    assert len(rows) == -(-len(reference) // (seq_len - 1))
    order = np.arange(len(rows))[::-1]  # any order, one read
    batch = rows.rows(order)
    for i, r in enumerate(order):
        tokens, doc_ids, starts = reference_concat_row(reference, r, seq_len)
        assert batch["tokens"][i].tolist() == tokens, r
        assert batch["document_ids"][i].tolist() == doc_ids, r
        assert batch["word_starts"][i].tolist() == starts, r
        assert batch["maskable"][i].tolist() == [t not in (CLS, SEP, PAD, UNK) for t in tokens]
    assert batch["tokens"].dtype == np.int32 and batch["document_ids"].dtype == np.int32


@pytest.mark.parametrize("seq_len", [4, 6, 16])
def test_pad_rows_hold_one_document_truncated_to_fit_its_sep(stream, seq_len):
    rows = packing.PackedRows(stream, seq_len=seq_len, packing="pad", tokenizer=StubTokenizer())
    assert len(rows) == len(DOCS)
    batch = rows.rows(np.arange(len(DOCS)))
    for r in range(len(DOCS)):
        tokens, doc_ids, starts = reference_pad_row(DOCS, r, seq_len)
        assert batch["tokens"][r].tolist() == tokens, r
        assert batch["document_ids"][r].tolist() == doc_ids, r
        assert batch["word_starts"][r].tolist() == starts, r


def test_unit_starts_ride_along_when_the_stream_has_them(tmp_path):
    class EveryOther:  # a PmiUnits stand-in: units start at even positions of a document
        fingerprint = "test"

        def unit_starts(self, ids, starts):
            return np.arange(len(ids)) % 2 == 0

    stream = packing.tokenize_to_stream(DOCS, StubTokenizer(), str(tmp_path), units=EveryOther())
    rows = packing.PackedRows(stream, seq_len=8, packing="concat", tokenizer=StubTokenizer())
    batch = rows.rows(np.arange(len(rows)))
    reference = reference_stream(DOCS)
    marks = []
    for d in range(len(DOCS)):
        n = sum(1 for *_, doc in reference if doc == d) - 1  # without its [SEP]
        marks += [i % 2 == 0 for i in range(n)] + [False]
    flat = batch["unit_starts"][:, 1:].reshape(-1)[: len(marks)]
    assert flat.tolist() == marks
    assert not batch["unit_starts"][:, 0].any()


def test_token_dtype_is_the_narrowest_that_holds_the_vocabulary():
    small, large = StubTokenizer(), StubTokenizer()
    small.vocab_size, large.vocab_size = 65536, 65537
    assert packing.token_dtype(small) == np.uint16
    assert packing.token_dtype(large) == np.int32
