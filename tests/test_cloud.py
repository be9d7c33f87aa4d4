"""Cloud runs and sweeps on SkyPilot (launch/*.yaml, launch/run.sh, sweep --launch=sky), with
no cloud account: the task YAMLs go through SkyPilot's own parser, the `sky jobs launch`
commands through SkyPilot's own command line parser, and the arguments each job hands to
mlm_jax.main are compared with what `--launch=print` prints for the same sweep.

SkyPilot is the optional `[cloud]` extra; it pins click below the version transformers'
huggingface-hub needs, so it lives in a venv of its own (.ci/run makes one) and its parsers run
there (tests/sky_parse.py), found through MLM_JAX_SKYPILOT_PYTHON; without it those checks skip.
"""

import functools
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from mlm_jax.config.defaults import base_config
from mlm_jax.sweep import SweepError, execution
from mlm_jax.sweep.axes import expand, parse_axes, run_name
from mlm_jax.sweep.execution import run_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILES = sorted(glob.glob(os.path.join(REPO, "launch", "*.yaml")))
ARGS = "--config=configs/bert.py:base --workdir=gs://b/run"
_subprocess_run = subprocess.run


def skypilot(commands=()) -> dict:
    """What SkyPilot's own parsers make of the launch files and of `commands`."""
    python = os.environ.get("MLM_JAX_SKYPILOT_PYTHON") or (
        sys.executable if importlib.util.find_spec("sky") else None
    )
    if python is None:
        pytest.skip("SkyPilot is not installed: set MLM_JAX_SKYPILOT_PYTHON (see .ci/run)")
    request = {"launch_files": LAUNCH_FILES, "mlm_args": ARGS, "commands": list(commands)}
    done = _subprocess_run(  # (the sweep test stands a fake in for subprocess.run)
        [python, os.path.join(REPO, "tests", "sky_parse.py")], input=json.dumps(request),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


SWEEP = ["masking.ratio=0.15,0.4", "seed=0,1"]
BASE = ["--config=configs/tiny.py", "--config.train.num_steps=5"]
SKY_WORKDIR = "gs://b/Sweep_1"


def sweep_jobs() -> list[list[str]]:
    """The `sky jobs launch` commands --launch=sky makes of SWEEP, none of it finished."""
    runs = expand(parse_axes(SWEEP, base_config()))
    todo = [(f"{SKY_WORKDIR}/{run_name(settings)}", settings, None) for settings in runs]
    return execution.sky_job_commands(todo, BASE, SKY_WORKDIR, "launch/tpu_v5e.yaml")


@functools.cache
def parsed() -> dict:
    """SkyPilot's reading of the launch files and of sweep_jobs(): one start of its parser."""
    return skypilot(sweep_jobs())


def parsed_tasks() -> dict:
    return parsed()["tasks"]


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=os.path.basename)
def test_launch_files_parse_with_skypilots_parser(path):
    task = parsed_tasks()[path]
    assert "MLM_ARGS" in task["refused_without_args"]  # required: no run without its arguments
    assert task["envs"]["MLM_ARGS"] == ARGS
    assert (task["setup"], task["run"], task["workdir"]) == (
        "bash launch/setup.sh",
        "bash launch/run.sh",
        ".",
    )
    (accelerator,) = task["accelerators"]
    assert task["use_spot"]
    if "tpu" in os.path.basename(path):
        assert accelerator.startswith(("tpu-v4-", "tpu-v5litepod-"))
        assert task["cloud"] == "GCP" and task["accelerator_args"]["runtime_version"]
        assert task["envs"]["MLM_JAX_DISTRIBUTED"] == "1" and task["envs"]["MLM_JAX_EXTRA"] == "tpu"
    else:
        assert accelerator == "H100" and task["envs"]["MLM_JAX_EXTRA"] == "cuda12"


def _run_sh(tmp_path, mlm_args, **env):
    """launch/run.sh with a stand-in venv whose `python` prints its arguments as JSON."""
    venv = tmp_path / "mlm_jax_venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "activate").write_text(f'export PATH="{venv}:$PATH"\n')
    (venv / "python").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        '"import json, sys; print(json.dumps(sys.argv[1:]))" "$@"\n'
    )
    (venv / "python").chmod(0o755)
    environment = {**os.environ, "HOME": str(tmp_path), "MLM_ARGS": mlm_args, **env}
    return subprocess.run(
        ["bash", "launch/run.sh"], cwd=REPO, env=environment, capture_output=True, text=True
    )


def test_run_sh_hands_main_the_arguments_as_quoted(tmp_path):
    args = ["--config=configs/bert.py:base", "--workdir=gs://b/sweep/masking.ratio=0.3,seed=1",
            "--config.data.dataset=text:my corpus/*.txt", "--config.masking.strategy=span"]  # fmt: skip
    done = _run_sh(tmp_path, shlex.join(args))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["-m", "mlm_jax.main", *args]
    two = _run_sh(
        tmp_path, shlex.join(args), SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK="1",
        SKYPILOT_NODE_IPS="10.0.0.5\n10.0.0.6",
    )  # fmt: skip
    assert json.loads(two.stdout)[-3:] == [
        "--coordinator_address=10.0.0.5:12355", "--num_processes=2", "--process_id=1",
    ]  # fmt: skip
    tpu = _run_sh(tmp_path, shlex.join(args), SKYPILOT_NUM_NODES="2", MLM_JAX_DISTRIBUTED="1")
    assert json.loads(tpu.stdout) == ["-m", "mlm_jax.main", *args]  # JAX asks the TPU metadata
    local = _run_sh(tmp_path, "--config=configs/tiny.py --workdir=/tmp/run")
    assert local.returncode == 2 and local.stderr.startswith("error: MLM_ARGS needs --workdir=gs")


def test_sky_sweep_submits_one_job_per_unfinished_run_with_the_print_lines(
    bucket, monkeypatch, capsys
):
    workdir = SKY_WORKDIR
    run_sweep(base_config(), workdir, SWEEP, base_args=BASE, launch="print")
    printed = capsys.readouterr().out.strip().splitlines()
    submitted = []

    def fake_run(command, **kwargs):
        submitted.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(execution.subprocess, "run", fake_run)
    monkeypatch.setattr(execution.shutil, "which", lambda name: f"/usr/bin/{name}")  # SkyPilot
    assert run_sweep(base_config(), workdir, SWEEP, base_args=BASE, launch="sky") == []
    assert len(submitted) == len(printed) == 4
    names = set()
    for command, line in zip(submitted, printed):
        assert command[:4] == ["sky", "jobs", "launch", "launch/tpu_v5e.yaml"]
        env = command[command.index("--env") + 1]
        assert env.startswith("MLM_ARGS=")
        assert f"python -m mlm_jax.main {env[len('MLM_ARGS=') :]}" == line
        name = command[command.index("--name") + 1]
        assert re.fullmatch(r"sweep-1-[a-z0-9-]+", name)
        names.add(name)
    assert len(names) == 4
    with pytest.raises(SweepError, match="must be a bucket"):
        run_sweep(base_config(), "/tmp/local-sweep", SWEEP, base_args=BASE, launch="sky")
    # The options exist, as SkyPilot's own command line reads them.
    assert submitted == sweep_jobs()  # (parsed with the launch files)
    for command, options in zip(submitted, parsed()["commands"]):
        assert options["detach_run"] and options["yes"]
        assert options["name"] == command[5]
        assert options["entrypoint"] == ["launch/tpu_v5e.yaml"]


def test_readme_cloud_tpu_block_is_what_the_sweep_prints():
    """README's Cloud TPU section: its sweep command (gs:// served from memory) prints exactly
    the fenced block that follows it."""
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("## Cloud TPU\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    command = re.search(r"^python experiments/sweep\.py .*?--dry_run$", blocks[0], re.M | re.S)
    argv = shlex.split(command.group(0).replace("\\\n", " "))
    script = (
        "import runpy, sys; from tests import fake_gcs; fake_gcs.install(); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *argv[1:]], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == blocks[1]
