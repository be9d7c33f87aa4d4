"""How every command line stops on an error it can name: one `error:` line on stderr.

Exit code 2 is bad input (a flag, a path, a config value), found before any work; 1 is a run
that failed on its way (a non-finite loss, a checkpoint that could not be written). Errors not
named here keep their traceback: they are bugs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

BAD_INPUT = (ValueError, FileNotFoundError)  # what a missing or malformed input raises


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def help_if_asked(doc: str) -> None:
    """For a script without flags: --help prints its docstring and exits 0 (not a run)."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(doc.strip())
        raise SystemExit(0)


def absl_flags_parser(doc: str, module_name: str):
    """A flags_parser for absl's app.run whose --help prints `doc` and the module's flags and
    exits 0 (absl's own exits 1, which scripts read as a failure)."""

    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        if any(arg in HELP_FLAGS for arg in argv[1:]):
            print(doc.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(module_name))
            raise SystemExit(0)
        return flags.FLAGS(argv)

    return parse


def install_extra(extra: str) -> str:
    """How to install one of pyproject.toml's optional extras, from the checkout."""
    return f"pip install -e '.[{extra}]'"


TEST_REQUIREMENTS = "pip install -r requirements-test.txt"  # the tests' references


def missing_package(package: str, install: str, needed_by: str) -> str:
    """The one line for a command whose optional package is not installed."""
    return f"{needed_by} needs {package}, which is not installed: {install}"


def fail(message, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors(
    errors: tuple[type[BaseException], ...] = BAD_INPUT, code: int = 2
) -> Iterator[None]:
    """Ends the command with `fail` when the block raises one of `errors`."""
    try:
        yield
    except errors as e:
        fail(e, code)


class _KnownNoise:
    """Drops library log lines that report nothing wrong on an ordinary run."""

    def __init__(self):
        import importlib.util

        self._no_tpu = importlib.util.find_spec("libtpu") is None

    def filter(self, record) -> bool:
        message = str(record.msg)
        if "tensorflow_datasets" in record.pathname and message.startswith(
            ("Variant folder", "Using custom data configuration")
        ):
            return False  # our builders pass their config objects, and build variants on use
        if self._no_tpu and message.startswith("Unable to initialize backend 'tpu'"):
            return False  # no TPU runtime installed: JAX's probe for one cannot succeed
        if message.startswith("apitools not found, and bigquery client libraries"):
            return False  # Beam's optional BigQuery client, which nothing here uses
        return True


def quiet_library_noise() -> None:
    """Keeps known harmless library lines out of a run's log (real warnings stay)."""
    import logging

    noise = _KnownNoise()
    for name in ("", "absl", "jax._src.xla_bridge"):  # ("": the root logger)
        logging.getLogger(name).addFilter(noise)
