"""The error a bad config, flag or workdir raises: one line, before anything compiles."""

from __future__ import annotations

import contextlib


class ConfigError(ValueError):
    """A bad config, flag or workdir, found before any compilation."""


@contextlib.contextmanager
def as_config_errors():
    """Reports the ValueErrors of the setup phase as ConfigError (one line, non-zero exit)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
