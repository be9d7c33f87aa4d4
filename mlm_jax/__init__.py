"""mlm_jax: masked language modeling in JAX/Flax."""
