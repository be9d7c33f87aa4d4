"""The run: specs resolved from a config, the sharded train and eval steps, the loop, and what a
run keeps on disk (checkpoints, workdir lock, metrics)."""
