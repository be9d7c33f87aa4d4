"""PMI vocabularies and tokenizers: a damaged one is one line naming the file; data.tokenizer and
data.pmi never write over --out; a run records the fingerprints of what it trains with
(inputs.json) and a resume that meets other bytes stops in one line naming both."""

import json
import shutil

import pytest

from mlm_jax.config.errors import ConfigError
from mlm_jax.data import loader, pmi
from mlm_jax.data.spec import DataSpec
from mlm_jax.data.tokenizer import __main__ as tokenizer_command
from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.training import inputs
from mlm_jax.training import run as train
from tests.configs import small_run_config
from tests.test_pmi import VOCAB

NGRAMS = [(0.0, ((2000,), (2001,))), (0.0, ((2002,), (2003, 2004), (2005,)))]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


def write_vocab(out, tokenizer, ngrams=NGRAMS):
    meta = {"tokenizer": tokenizer.fingerprint(), "max_n": 3, "kept": len(ngrams)}
    pmi.write_vocabulary(str(out), ngrams, meta)
    return out / pmi.VOCAB_FILE


def test_a_written_vocabulary_reads_back(tmp_path, tokenizer):
    write_vocab(tmp_path / "v", tokenizer)
    units = pmi.load_units(str(tmp_path / "v"), tokenizer)
    assert units.ngrams == {ngram for _, ngram in NGRAMS} and units.max_n == 3


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_vocabulary_is_one_line_naming_it(tmp_path, tokenizer, legacy):
    path = write_vocab(tmp_path / "v", tokenizer)
    if legacy:  # written before the meta held a sha256: its n-gram count still tells
        meta = json.loads((tmp_path / "v" / pmi.META_FILE).read_text())
        del meta["sha256"]
        (tmp_path / "v" / pmi.META_FILE).write_text(json.dumps(meta))
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=f"^{path}: ") as info:
        pmi.load_units(str(tmp_path / "v"), tokenizer)
    assert "\n" not in str(info.value)


def test_ids_beyond_the_vocabulary_are_one_line(tmp_path, tokenizer):
    path = write_vocab(tmp_path / "v", tokenizer, [(0.0, ((5,), (tokenizer.vocab_size + 7,)))])
    with pytest.raises(ValueError, match=f"^{path}: line 1 holds id {tokenizer.vocab_size + 7}"):
        pmi.load_units(str(tmp_path / "v"), tokenizer)


@pytest.mark.parametrize("name", [pmi.VOCAB_FILE, pmi.META_FILE])
def test_garbage_bytes_are_one_line_naming_the_file(tmp_path, tokenizer, name):
    write_vocab(tmp_path / "v", tokenizer)
    (tmp_path / "v" / name).write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'v' / name}: ") as info:
        pmi.load_units(str(tmp_path / "v"), tokenizer)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "command",
    [
        lambda out: pmi.main([f"--tokenizer={VOCAB}", f"--out={out}"]),
        lambda out: tokenizer_command.main([f"--out={out}"]),
    ],
    ids=["data.pmi", "data.tokenizer"],
)
def test_builders_never_write_over_out(tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "vocab.txt").write_text("my own words\n")
    with pytest.raises(SystemExit) as exit_info:
        command(out)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --out={out} already holds files (vocab.txt); choose a new or empty folder, so "
        "that none of them is overwritten\n"
    )
    assert (out / "vocab.txt").read_text() == "my own words\n"


def test_a_store_prepared_again_differs_from_the_recorded_one(tmp_path):
    """inputs.check_resume on a store whose manifest changed (prepared again, other shards)."""
    from tests.test_prepare_faults import SMALL, data, on_the_fly_config, prepare

    config = on_the_fly_config((tmp_path, _corpus(tmp_path)), "concat")
    out = tmp_path / "rows"
    prepare.prepare(data(config), str(out), **SMALL)
    config.data.dataset = f"rows:{out}"
    tokenizer = load_tokenizer(str(out / "tokenizer"))
    run = train.resolve(config)
    before = inputs.fingerprints(run, tokenizer)
    inputs.record(str(tmp_path / "w"), before, tokenizer)
    shutil.rmtree(out)
    prepare.prepare(data(on_the_fly_config((tmp_path, _corpus(tmp_path)), "concat")), str(out),
                    rows_per_shard=5, docs_per_chunk=13)  # fmt: skip
    with pytest.raises(
        ValueError, match=f"the store {out}/manifest.json is not the one .* trained with"
    ):
        inputs.check_resume(str(tmp_path / "w"), inputs.fingerprints(run, tokenizer))


def _corpus(root):
    from tests.test_data_loader import real_paragraphs

    path = root / "corpus.txt"
    if not path.exists():
        path.write_text("\n\n".join(real_paragraphs(60)) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.slow  # trains a few steps, then checks resumes against changed inputs
def test_a_resume_meeting_other_pmi_or_tokenizer_bytes_is_refused(data_dir, tmp_path):
    config = small_run_config(data_dir, num_steps=2)
    config.checkpoint.every_steps = 2
    config.eval.every_steps = 2
    config.train.warmup_steps = 1
    tokenizer = loader.get_tokenizer(DataSpec.from_config(config.data))
    vocab = tmp_path / "pmi"
    write_vocab(vocab, tokenizer, [(0.0, ((20,), (21,))), (0.0, ((30,), (31,)))])
    config.masking.strategy, config.masking.pmi_vocab = "pmi", str(vocab)
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    recorded = json.loads((workdir / inputs.INPUTS_FILE).read_text())
    assert set(recorded) == {"tokenizer", "pmi_vocab"}

    saved = (workdir / inputs.INPUTS_FILE).read_text()
    (workdir / inputs.INPUTS_FILE).unlink()  # a workdir from before inputs.json resumes
    assert train.check(config, str(workdir)).resume_step == 2
    (workdir / inputs.INPUTS_FILE).write_text(saved)

    shutil.rmtree(vocab)  # rebuilt at the same path, other n-grams
    write_vocab(vocab, tokenizer, [(0.0, ((40,), (41,)))])
    with pytest.raises(ConfigError) as info:
        train.check(config, str(workdir))
    message = str(info.value)
    assert f"the pmi vocab {vocab / pmi.VOCAB_FILE} is not the one {workdir} trained" in message
    assert recorded["pmi_vocab"]["fingerprint"][:16] in message and "\n" not in message

    shutil.rmtree(vocab)
    write_vocab(vocab, tokenizer, [(0.0, ((20,), (21,))), (0.0, ((30,), (31,)))])
    assert train.check(config, str(workdir)).resume_step == 2  # the same bytes again
    copy = workdir / "tokenizer" / "tokenizer.json"
    definition = json.loads(copy.read_text())
    definition["normalizer"]["strip_accents"] = not definition["normalizer"]["strip_accents"]
    copy.write_text(json.dumps(definition))
    with pytest.raises(ConfigError, match=f"the tokenizer tokenizer/ is not the one {workdir}"):
        train.check(config, str(workdir))
