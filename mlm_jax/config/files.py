"""Experiment config files (configs/<exp>.py) loaded by path.

mlm_jax.main and the absl scripts take `--config=configs/<exp>.py` through ml_collections'
config_flags; a script with an argparse command line loads the same file here instead of
putting configs/ on sys.path (configs/ is a folder of files, not a package).
"""

from __future__ import annotations

import importlib.util
import os


def load_config_file(path: str, *args):
    """The `get_config(*args)` of the Python file at `path`: a fresh, unlocked ConfigDict
    (`args`: what follows the ':' of `--config=configs/<exp>.py:<arg>`)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"config_file_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
