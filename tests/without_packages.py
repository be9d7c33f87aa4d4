"""Runs a module as `python -m` would, with some packages made unimportable (as if not installed).

python tests/without_packages.py apache_beam,sky mlm_jax.data.prepare --help
"""

import os
import runpy
import sys


class _NotInstalled:
    """A meta path finder that refuses the named top-level packages."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if __name__ == "__main__":
    blocked, module, *args = sys.argv[1:]
    sys.path[0] = os.getcwd()  # as `python -m` has it (not this file's folder)
    sys.meta_path.insert(0, _NotInstalled(blocked.split(",")))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
