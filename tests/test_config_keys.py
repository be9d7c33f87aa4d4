"""What may change about a run without making it another run: tags beside the defaults
(config/defaults.py), read by the resume check and by a phase's model.init_from check.

The lists below are the contract README and docs/extending.md state; the resume and phase checks
are run for every key of the config, not only the tagged ones.
"""

import dataclasses

import ml_collections
import pytest

from mlm_jax.config import defaults, doc, keys
from mlm_jax.config.errors import ConfigError
from mlm_jax.masking import MaskingSpec
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import optim, pretrained, resume
from mlm_jax.training.spec import TrainSpec

ON_RESUME = {
    "train.num_steps", "train.nan_policy", "log.every_steps", "log.wandb_project", "eval.every_steps",
    "eval.num_batches", "checkpoint.every_steps", "checkpoint.keep", "mesh.data", "mesh.fsdp",
    "mesh.tensor", "mesh.logical_axis_rules", "data.prefetch", "data.num_workers",
    "data.data_dir", "eval.nll_bound_rates", "model.remat", "model.fused_qkv", "model.attention", "model.init_from",
}  # fmt: skip
BETWEEN_PHASES = {
    "dtype", "attention", "remat", "fused_qkv", "dropout_rate", "attention_dropout_rate",
    "max_position_embeddings", "attend_across_documents", "initializer_range",
}  # fmt: skip


def _all_keys():
    return list(keys.flatten(defaults.base_config()))


def test_the_keys_a_resumed_run_may_change():
    found = {k for k in _all_keys() if defaults.can_change(k, keys.ON_RESUME)}
    assert found == ON_RESUME


def test_the_model_keys_a_phase_may_change():
    found = {k for k in _all_keys() if defaults.can_change(k, keys.BETWEEN_PHASES)}
    assert found == {f"model.{k}" for k in BETWEEN_PHASES}


def _other_value(value):
    """A value unequal to `value` of the same type (the resume check compares, never checks)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return (*value, "x")


@pytest.fixture
def saved_run(monkeypatch):
    """A workdir whose checkpoints were written under the defaults."""
    saved = defaults.base_config()
    monkeypatch.setattr(resume.ckpt, "latest_step", lambda workdir: 10)
    monkeypatch.setattr(resume.ckpt, "saved_config", lambda workdir: saved)


@pytest.mark.parametrize("key", _all_keys())
def test_a_resume_accepts_a_change_exactly_where_the_key_is_tagged(saved_run, key):
    config = defaults.base_config()
    section, name = key.split(".") if "." in key else (None, key)
    holder = config[section] if section else config
    with holder.ignore_type():
        holder[name] = _other_value(holder[name])
    if key in ON_RESUME:
        resume.check_resume_compatible(config, "run")
    else:
        with pytest.raises(ConfigError, match=rf"\({key}: "):
            resume.check_resume_compatible(config, "run")


def test_a_resume_takes_vocab_size_0_as_the_tokenizers(monkeypatch):
    saved = defaults.base_config()
    saved.model.vocab_size = 8192  # what the resolved config.json records
    monkeypatch.setattr(resume.ckpt, "latest_step", lambda workdir: 10)
    monkeypatch.setattr(resume.ckpt, "saved_config", lambda workdir: saved)
    resume.check_resume_compatible(defaults.base_config(), "run")


def _resumed_k(monkeypatch, saved_k, config_k=0):
    """K of a run (defaults: 15 % of 128 tokens, derived K 19) resuming a workdir that
    recorded `saved_k`, or starting afresh when saved_k is None."""
    from mlm_jax.training.resolve import resolve

    saved = defaults.base_config()
    saved.masking.max_predictions = saved_k or 0
    monkeypatch.setattr(resume.ckpt, "latest_step", lambda workdir: None if saved_k is None else 10)
    monkeypatch.setattr(resume.ckpt, "saved_config", lambda workdir: saved)
    config = defaults.base_config()
    config.masking.max_predictions = config_k
    recorded = resume.check_resume_compatible(config, "run")
    run = resolve(config, num_devices=1, local_devices=1, num_hosts=1)
    k = resume.recorded_k(run, config, recorded)
    assert resume.resolved_config(config, run.with_max_predictions(k)).masking.max_predictions == k
    return k


def test_a_resumed_run_keeps_the_k_its_workdir_recorded(monkeypatch):
    assert _resumed_k(monkeypatch, None) == 19  # a new run: ceil(0.15 * 126), recorded as such
    assert _resumed_k(monkeypatch, 19) == 19  # recorded by a run since K is exact
    assert _resumed_k(monkeypatch, 0) == 24  # recorded before: its K was rounded up to 8
    assert _resumed_k(monkeypatch, 24, config_k=24) == 24  # the config's own K
    with pytest.raises(ConfigError, match=r"masking.max_predictions: 19 -> 20"):
        _resumed_k(monkeypatch, 19, config_k=20)


def _model_spec(**changes) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    model = {k: v for k, v in defaults.base_config().model.items() if k in fields}
    return ModelSpec(**{**model, "vocab_size": 100, **changes})


@pytest.mark.parametrize(
    "changes",
    [{"dtype": "bfloat16"}, {"dropout_rate": 0.0, "attention_dropout_rate": 0.0},
     {"remat": "full", "fused_qkv": False, "attention": "cudnn"},
     {"max_position_embeddings": 1024}, {"attend_across_documents": True},
     {"initializer_range": 0.04}, {"vocab_size": 200}],
)  # fmt: skip
def test_a_phase_may_change_how_the_model_computes(monkeypatch, changes):
    source = pretrained.Pretrained(_model_spec(), {}, None, 128, True, "run")
    monkeypatch.setattr(pretrained, "is_run_dir", lambda path: True)
    monkeypatch.setattr(pretrained, "load", lambda *a, **k: source)
    pretrained.check_init_from("run", _model_spec(**changes))


@pytest.mark.parametrize(
    "changes", [{"hidden_size": 128, "num_heads": 4}, {"gelu": "tanh"}, {"pre_ln": True},
                {"num_layers": 2}, {"layer_norm_eps": 1e-6}, {"arch": "modernbert"}],
)  # fmt: skip
def test_a_phase_may_not_change_what_the_model_is(monkeypatch, changes):
    source = pretrained.Pretrained(_model_spec(), {}, None, 128, True, "run")
    monkeypatch.setattr(pretrained, "is_run_dir", lambda path: True)
    monkeypatch.setattr(pretrained, "load", lambda *a, **k: source)
    key = next(iter(changes))
    with pytest.raises(ValueError, match=rf"that run has model.{key}="):
        pretrained.check_init_from("run", _model_spec(**changes))


def test_compute_only_implies_both_and_tags_are_checked():
    assert keys.may_change(1, keys.COMPUTE_ONLY).when == {
        keys.COMPUTE_ONLY,
        keys.ON_RESUME,
        keys.BETWEEN_PHASES,
    }
    with pytest.raises(ValueError, match="may_change"):
        keys.may_change(1, "sometimes")
    with pytest.raises(ValueError, match="may_change"):
        keys.may_change(1)


def test_unwrap_gives_plain_values_and_the_tags():
    tagged = ml_collections.ConfigDict()
    tagged.a = keys.may_change(3, keys.ON_RESUME)
    tagged.s = ml_collections.ConfigDict({"b": (1, 2)})
    tagged.s.c = keys.may_change("x", keys.BETWEEN_PHASES)
    plain, when = keys.unwrap(tagged)
    assert plain.to_dict() == {"a": 3, "s": {"b": (1, 2), "c": "x"}}
    assert when == {"a": {keys.ON_RESUME}, "s.c": {keys.BETWEEN_PHASES}}
    assert keys.flatten(plain) == {"a": 3, "s.b": (1, 2), "s.c": "x"}


def test_print_config_says_what_may_change():
    lines = doc.describe(defaults.base_config()).splitlines()
    assert len(lines) == len(_all_keys())
    assert any(
        line.startswith("train.num_steps = 3000  [may change on resume]  # ") for line in lines
    )
    assert any(
        line.startswith("model.remat = 'none'  [may change on resume and between phases]  # ")
        for line in lines
    )
    assert not any("may change" in line for line in lines if line.startswith("model.hidden_size"))


@pytest.mark.parametrize("spec, section", [(optim.OptimizerSpec, "train"), (ModelSpec, "model"),
                                           (MaskingSpec, "masking")])  # fmt: skip
def test_a_specs_defaults_are_the_configs(spec, section):
    """A spec's own default (used where a spec is built without a config) is the key's."""
    config = defaults.base_config()[section]
    checked = 0
    for field in dataclasses.fields(spec):
        if field.default is not dataclasses.MISSING and field.name in config:
            assert field.default == config[field.name], field.name
            checked += 1
    assert checked >= 8


def test_the_loops_defaults_are_the_configs():
    config = defaults.base_config()
    required = {"num_steps": config.train.num_steps, "batch_size": config.train.batch_size}
    assert TrainSpec(**required) == TrainSpec.from_config(config)
