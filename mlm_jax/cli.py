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
