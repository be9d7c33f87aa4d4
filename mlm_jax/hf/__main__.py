"""`python -m mlm_jax.hf`: the command lives in command.py, so tests and scripts can import it."""

from mlm_jax.hf.command import main

if __name__ == "__main__":
    main()
