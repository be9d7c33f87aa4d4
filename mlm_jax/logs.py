"""How a command's log reads: `HH:MM:SS message`, warnings as `HH:MM:SS warning: message`.

absl's own prefix (`I1204 15:13:55.289294 140268450192256 metrics.py:169]`) tells a user
nothing they need, and its file name misleads where a helper logs for its caller. This
project's loggers speak at INFO; libraries at WARNING, minus the lines known to report nothing
wrong on an ordinary run (mlm_jax/cli.py's list).
"""

from __future__ import annotations

import logging
import time

from mlm_jax import cli


class _TimeThenMessage(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        kind = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        text = f"{stamp} {kind}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure() -> None:
    """The log of a command run under absl's app.run (call it in main)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # libraries: warnings only
    logging.getLogger("mlm_jax").setLevel(logging.INFO)  # the run's own progress lines
    absl_logging.get_absl_handler().setFormatter(_TimeThenMessage())
    cli.quiet_library_noise()
