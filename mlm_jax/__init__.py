"""mlm_jax: masked language modeling in JAX/Flax."""

from mlm_jax import host_allocator

# Before JAX starts its CPU threads: see host_allocator.py (MLM_JAX_MALLOC=system opts out).
host_allocator.keep_freed_memory()
