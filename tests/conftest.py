"""Shared test setup: quiet JAX on CPU, and small configs built from the real defaults."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
