"""The experiment scripts (sweeps, benchmarks, estimates), importable for tests and presets.

Each module is also a command line: `python experiments/<name>.py --help`.
"""
