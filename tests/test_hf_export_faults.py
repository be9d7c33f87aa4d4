"""`hf export` never writes over the user's files nor through a symlink, publishes whole or not
at all, and every reader of a HF directory refuses damaged weights in one line naming the file."""

import hashlib
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mlm_jax import checksums, fill_mask
from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.hf import command as hf_command
from mlm_jax.hf import directories as hf_dir
from mlm_jax.models.bert import BertMLM
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import pretrained

SPEC = ModelSpec(num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16, vocab_size=90)


@pytest.fixture(scope="module")
def params():
    tokens = jnp.ones((1, 4), jnp.int32)
    return nn.unbox(jax.jit(BertMLM(SPEC).init)(jax.random.key(0), tokens, tokens[:, :1]))["params"]


@pytest.fixture
def tokenizer(tmp_path):
    words = [f"w{i}" for i in range(85)]
    path = tmp_path / "vocab" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return load_tokenizer(str(path))


@pytest.fixture
def exported(tmp_path, params, tokenizer):
    out = tmp_path / "export"
    hf_dir.export_hf(params, SPEC, tokenizer, str(out))
    return out


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_export_lists_every_file_in_sha256sums_and_reads_back(exported):
    sums = checksums.read_sums(str(exported))
    assert set(sums) == set(os.listdir(exported)) - {"SHA256SUMS"}
    assert sums == {n: digest(exported / n) for n in sums}  # hashlib, not our hashing
    assert pretrained.load(str(exported)).has_mlm_head


def test_export_refuses_a_directory_holding_the_users_files(tmp_path, params, tokenizer):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    (out / "vocab.txt").write_text("my words\n")
    with pytest.raises(ValueError, match=r"holds files no export wrote \(config.json, vocab.txt\)"):
        hf_dir.export_hf(params, SPEC, tokenizer, str(out))
    assert (out / "config.json").read_text() == '{"mine": 1}'
    assert (out / "vocab.txt").read_text() == "my words\n"


def test_export_never_writes_through_a_symlink_out_of_the_directory(
    tmp_path, exported, params, tokenizer
):
    outside = tmp_path / "outside.json"
    outside.write_text("the user's own file")
    (exported / "config.json").unlink()
    os.symlink(outside, exported / "config.json")  # an earlier export, one file now a link
    hf_dir.export_hf(params, SPEC, tokenizer, str(exported))
    assert outside.read_text() == "the user's own file"
    assert not os.path.islink(exported / "config.json")
    assert checksums.verify_dir(str(exported))
    # A link that is not the export's own file is the user's: refused, target untouched.
    os.symlink(outside, exported / "notes.json")
    with pytest.raises(ValueError, match=r"holds files no export wrote \(notes.json\)"):
        hf_dir.export_hf(params, SPEC, tokenizer, str(exported))
    assert outside.read_text() == "the user's own file"


def test_a_failed_export_publishes_nothing_and_keeps_the_earlier_one(
    tmp_path, exported, params, tokenizer, monkeypatch
):
    before = {n: digest(exported / n) for n in os.listdir(exported)}

    def killed(*_):
        raise OSError("disk full")

    monkeypatch.setattr(hf_dir, "_write_tokenizer", killed)
    with pytest.raises(OSError, match="disk full"):
        hf_dir.export_hf(params, SPEC, tokenizer, str(exported))
    with pytest.raises(OSError, match="disk full"):
        hf_dir.export_hf(params, SPEC, tokenizer, str(tmp_path / "new"))
    assert before == {n: digest(exported / n) for n in os.listdir(exported)}
    assert not os.path.exists(tmp_path / "new")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left


def test_export_cli_out_dir_naming_a_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    target = tmp_path / "model.bin"
    target.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        hf_command.main(["export", f"--workdir={run}", f"--out_dir={target}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: --out_dir={target}: a file, not a directory\n"
    assert target.read_text() == "mine"


def flip_middle_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_flipped_bytes_in_exported_weights_are_refused_by_every_reader(exported, capsys):
    weights = exported / "model.safetensors"
    flip_middle_byte(weights)
    expected = f"{weights}: damaged or replaced"
    with pytest.raises(ValueError, match=expected):
        pretrained.load(str(exported))
    with pytest.raises(ValueError, match=expected):
        pretrained.check_init_from(str(exported), SPEC)
    for command in (
        lambda: fill_mask.main([f"--hf_dir={exported}", "w1 [MASK] w2"]),
        lambda: hf_command.main(["import", str(exported)]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            command()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("fingerprinted", [True, False])
def test_unreadable_safetensors_is_one_line_naming_it(exported, damage, fingerprinted):
    weights = exported / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(4096))
    if not fingerprinted:  # a HF directory from elsewhere: no SHA256SUMS to compare with
        (exported / "SHA256SUMS").unlink()
    with pytest.raises(ValueError, match=f"^{weights}: ") as info:
        pretrained.load(str(exported))
    assert "\n" not in str(info.value)


class _Payload:
    """What a malicious pickle would construct; torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("this ran",))


def test_pickle_pytorch_bin_is_one_line(tmp_path, exported, capsys):
    folder = tmp_path / "torch"
    folder.mkdir()
    (folder / "config.json").write_bytes((exported / "config.json").read_bytes())
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload()}, f)
    with pytest.raises(ValueError, match=f"^{folder / 'pytorch_model.bin'}: not loadable") as info:
        pretrained.load(str(folder), tokenizer=None)
    assert "\n" not in str(info.value)
    assert "this ran" not in capsys.readouterr().out
