"""A config resolved once into a RunSpec: every field checked, before anything is built.

    run = resolve(config)               # every field checked, before anything is built or written
    run = run.with_vocab(tokenizer)     # once the tokenizer is known: vocabulary sizes and ids

Each section's spec checks its own fields in its constructor; training/checks.py holds the
checks that span sections. Nothing after `resolve` reads the ConfigDict.
"""

from __future__ import annotations

from typing import Any

from mlm_jax.config.fields import check_int
from mlm_jax.data.spec import DataSpec
from mlm_jax.masking import MaskingSpec
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import checks, sharding
from mlm_jax.training.optim import OptimizerSpec
from mlm_jax.training.spec import RunSpec, TrainSpec


def resolve(
    config: Any,
    *,
    num_devices: int | None = None,
    local_devices: int | None = None,
    num_hosts: int | None = None,
) -> RunSpec:
    """Checks every field of `config` and returns its specs; one ValueError line per problem.

    Device and host counts default to this process's JAX runtime.
    """
    import jax

    num_devices = jax.device_count() if num_devices is None else num_devices
    local_devices = jax.local_device_count() if local_devices is None else local_devices
    num_hosts = jax.process_count() if num_hosts is None else num_hosts
    train = TrainSpec.from_config(config)
    data = DataSpec.from_config(config.data)
    run = RunSpec(
        seed=check_int("seed", config.seed, minimum=0),
        model=ModelSpec.from_config(config.model),
        masking=MaskingSpec.from_config(
            config.masking, seq_len=data.seq_len, num_steps=train.num_steps
        ),
        eval_masking=MaskingSpec.for_eval(config.eval, seq_len=data.seq_len),
        optimizer=OptimizerSpec.from_config(config.train),
        data=data,
        train=train,
        mesh=sharding.MeshSpec.from_config(config.mesh, num_devices),
        init_from=str(config.model.init_from),
    )
    checks.check_run(run, local_devices=local_devices, num_hosts=num_hosts)
    return run
