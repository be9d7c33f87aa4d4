"""Every command in README.md and docs/*.md runs as written, or stops with one `error:` line.

The commands are extracted from the documents themselves (fenced blocks, with `\\` continuations
joined, and inline `python ...` spans), so a new or edited command is checked without editing
this file. Each is run cheaply: paths under /tmp go to this test's folder (no training run,
corpus or export of the machine is read or written); `mlm_jax.main` gets `--print_config` (the
flags and config resolved, nothing trained); a sweep gets `--dry_run` (every run checked,
nothing written); a command with a placeholder (RUN_DIR, BUCKET, `...`, `$VAR`) or one that
trains or benchmarks for minutes runs `--help` of its module. What must hold: exit 0, or exit 2
with one `error:` line and no traceback (the documented way a missing input stops a command).
Each command runs in a process of its own, forked from one that imported the heavy libraries
once (tests/_docs_support.py): ~3 s of imports per command saved, exit status and output kept.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.doc_commands, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(f"{REPO}/docs/*.md"))]
PLACEHOLDER = re.compile(
    r"RUN_DIR|HF_DIR|HF_BERT_DIR|BUCKET|\bOUT\b|OUT_RANDOM|TRAIN,DEV|OUTDIR|\bDIR\b|=[A-Z]\b"
    r"|/path/to|\.\.\.|<|\[--|\$"
)
# Scripts that train or benchmark for minutes whatever their flags: their --help only.
LONG = ("benchmark", "gpu_estimate", "peers", "masking_ratio", "finetune_python_docs",
        "profile_summary", "masking_budget", "pmi_resume_check", "bench_data", "bench_masking", "bench_head_sums")  # fmt: skip
NOT_RUN = ("pytest", "venv", "pip ")  # the suite itself; installs (.ci/run does them)


def _commands(document: str) -> list[str]:
    with open(os.path.join(REPO, document)) as f:
        text = f.read()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\$ ", "", line.strip())
            line = re.sub(r"^(\w+=\S+\s+)+", "", line)  # VAR=value prefixes
            if re.match(r"python3? ", line):
                found.append(line)
    found += [m for m in re.findall(r"`(python3? [^`]+)`", text) if "\n" not in m]
    return list(dict.fromkeys(found))


def _program(argv: list[str]) -> list[str]:
    """`python -m MODULE` or `python SCRIPT`: the part before the arguments."""
    return argv[:3] if argv[1] == "-m" else argv[:2]


def _how_to_run(command: str, tmp: str) -> list[str] | None:
    """The argv that checks `command` cheaply (None: not run here)."""
    if any(word in command for word in NOT_RUN):
        return None
    command = re.sub(r"\s+#\s.*$", "", command)  # a trailing comment
    program = [sys.executable, *_program(command.split())[1:]]
    named_only = len(command.split()) <= len(program) + (program[-1] == "mlm_jax.hf")
    if PLACEHOLDER.search(command) or named_only or any(n in program[-1] for n in LONG):
        return [*program, "--help"]
    argv = [sys.executable, *shlex.split(command, comments=True)[1:]]
    if argv[1] == "-c":
        return argv
    argv = [re.sub(r"(?<![\w/])/tmp/", f"{tmp}/", a) for a in argv]
    if program[-1] == "mlm_jax.main":
        return [*argv, "--print_config"]
    if program[-1].endswith("sweep.py") and any(a.startswith("--sweep=") for a in argv):
        return [*argv, "--dry_run"]
    return argv


CASES = [(doc, command) for doc in DOCUMENTS for command in _commands(doc)]
# One run per distinct check (many commands come down to the same --help).
RUNS = {}
for _doc, _command in CASES:
    _argv = _how_to_run(_command, "TMP")
    if _argv is not None:
        RUNS.setdefault(shlex.join(_argv[1:]), (_doc, _command))


def test_the_documents_hold_the_commands_a_user_runs():
    commands = [c for _, c in CASES]
    assert any("mlm_jax.main --config=configs/tiny.py" in c for c in commands)
    assert any("experiments/benchmark.py --config=configs/bert.py:base" in c for c in commands)
    assert any("mlm_jax.finetune --pretrained=RUN_DIR --init=random" in c for c in commands)
    assert len(commands) > 40


@pytest.fixture(scope="module")
def python(data_dir, tmp_path_factory):
    """Runs `python ARGS` (as argv[1:]) in a fresh fork of a process with the imports done:
    returns (exit status, stderr)."""
    home = tmp_path_factory.mktemp("home")  # (what libraries read of HOME at import)
    env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", HOME=str(home))
    log = home / "server.log"
    with open(log, "w") as server_stderr:
        server = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "_docs_support.py")], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=server_stderr, text=True,
        )  # fmt: skip
    assert server.stdout.readline() == "ready\n", log.read_text()[-3000:]

    def run(args, tmp_path):
        out, err = str(tmp_path / "stdout.txt"), str(tmp_path / "stderr.txt")
        request = {"argv": args, "cwd": REPO, "stdout": out, "stderr": err,
                   "env": {"TFDS_DATA_DIR": data_dir, "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)}}  # fmt: skip
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        assert answer, log.read_text()[-3000:]  # (tests/_docs_support.py stopped)
        with open(err) as f:
            return json.loads(answer)["returncode"], f.read()

    yield run
    server.stdin.close()
    server.wait(timeout=60)


@pytest.mark.parametrize("check", list(RUNS), ids=[c[:70] for c in RUNS])
def test_a_documented_command_runs_or_stops_with_one_error_line(check, tmp_path, python):
    document, command = RUNS[check]
    argv = _how_to_run(command, str(tmp_path))
    returncode, stderr = python(argv[1:], tmp_path)
    stderr = stderr.strip()
    shown = f"{document}: {shlex.join(argv[1:])}\nexit {returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, shown
    if returncode != 0:
        assert returncode == 2, shown
        assert stderr.splitlines()[-1].startswith("error: "), shown
