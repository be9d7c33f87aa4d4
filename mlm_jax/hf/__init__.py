"""Hugging Face checkpoints: tensors <-> our parameters per family, directories on disk, and the
`python -m mlm_jax.hf` command (import / export)."""
