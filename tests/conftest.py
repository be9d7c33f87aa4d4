"""Shared test setup: quiet JAX on CPU, one compilation cache per session, shared fixtures."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite compiles hundreds of small programs and runs few steps of each: glibc's malloc
# kept as mlm_jax/host_allocator.py sets it speeds steps but slowed the ModernBERT tiny compile
# 4.3-4.7 s -> 5.5-6.9 s and the suite 7:09 -> 8:31. Subprocesses inherit this;
# tests/test_host_allocator.py checks the setting itself.
os.environ.setdefault("MLM_JAX_MALLOC", "system")
# Many tests compile the same small train step (in this process and in the runs they start as
# subprocesses, which inherit the environment): JAX's persistent compilation cache compiles it
# once per session. The folder is new for every session, so no test reads a cache it did not
# fill, and it goes at exit. pytest-xdist's workers inherit it from the controlling process, which
# made it and removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="mlm_jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
# Tests compile many small programs and run few steps of each: XLA's CPU backend compiles them
# ~40% faster without LLVM's optimization passes (a sharded train step: 22 s -> 13 s), and about
# twice as fast again with its older loop emitters instead of the fusion emitters (the tiny
# 4-layer train step: 4.86 -> 2.17 s; docs/architecture.md). The runs a test compares are
# compiled the same way.
# Subprocesses inherit it; tests that set XLA_FLAGS for a device count append theirs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--exhaustive",
        action="store_true",
        help="also run the tests marked exhaustive: every case of the matrices that by "
        "default run representative cases (~15 more minutes on 2 cores)",
    )


def pytest_collection_modifyitems(config, items):
    """Marked exhaustive: skipped, saying how to run them, unless --exhaustive. The suite CI
    runs stays within minutes; a change to what they cover runs them all."""
    if config.getoption("--exhaustive"):
        return
    skip = pytest.mark.skip(reason="one case of a matrix: run with --exhaustive")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir per test session: the built-in corpus and tokenizers build once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """gs:// served from memory (tests/fake_gcs.py) for one test, which runs in an empty
    tmp_path: a stray local folder named "gs:" would show there."""
    from tests import fake_gcs

    fs = fake_gcs.install()
    monkeypatch.chdir(tmp_path)
    yield fs
    fake_gcs.uninstall()


@pytest.fixture(scope="session")
def uninterrupted_run(data_dir, tmp_path_factory):
    """The workdir of resume_test_config's run, start to end: the oracle of the resume tests."""
    from mlm_jax.training.run import train_and_evaluate
    from tests.configs import resume_test_config

    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    train_and_evaluate(resume_test_config(data_dir), workdir)
    return workdir
