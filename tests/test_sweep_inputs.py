"""What a sweep is asked for: axes and their values, names, devices, and the bad inputs that
stop it in one line before any run (or anything) is written; --launch=print and --dry_run."""

import os
import time

import pytest

from mlm_jax.config.defaults import base_config
from mlm_jax.sweep import SweepError, execution
from mlm_jax.sweep.axes import apply_settings, expand, parse_axes, run_name
from mlm_jax.sweep.execution import run_sweep
from tests.configs import small_run_config
from tests.test_sweep import _sweep_cli


def test_values_that_would_share_a_directory_are_refused(tmp_path):
    config = base_config()
    spec = "data.dataset=text:/corpora/wiki en/*.txt,text:/corpora/wiki_en/*.txt"
    with pytest.raises(SweepError, match="would share the directory"):
        run_sweep(config, str(tmp_path / "sweep"), [spec], base_args=[], launch="print")
    assert not os.path.exists(tmp_path / "sweep")


def test_launch_print_gives_one_main_command_per_run(tmp_path, capsys):
    config = base_config()
    workdir = str(tmp_path / "sweep")
    base = ["--config=configs/tiny.py", "--config.train.num_steps=5"]
    run_sweep(
        config,
        workdir,
        ["masking.mask_prob/masking.random_prob=0.8/0.1,1.0/0.0", "seed=3"],
        base_args=base,
        launch="print",
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, (mask, rand) in zip(lines, [("0.8", "0.1"), ("1.0", "0.0")]):
        assert line.startswith("python -m mlm_jax.main --config=configs/tiny.py ")
        assert "--config.train.num_steps=5" in line
        name = f"masking.mask_prob={mask},masking.random_prob={rand},seed=3"
        assert f"--workdir={os.path.join(workdir, name)}" in line
        assert f"--config.masking.mask_prob={mask} --config.masking.random_prob={rand}" in line
    assert not any(os.path.isdir(os.path.join(workdir, d)) for d in os.listdir(workdir))


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("masking.ratoi=0.1,0.2", "'masking.ratoi' is not in the config"),
        ("masking=0.1", "is a section"),
        ("masking.ratio=", "empty value list"),
        ("masking.ratio=0.1,abc", "expected float"),
        ("train.num_steps=10,2.5", "expected int"),
        ("model.pre_ln=maybe", "expected a bool"),
        ("masking.never_mask_ids=1", "only bool, int, float and str"),
        ("masking.ratio", "expected KEY=V1,V2"),
        ("masking.mask_prob/masking.random_prob=0.8", "has 1 parts for 2 keys"),
    ],
)
def test_bad_sweep_inputs_are_one_line(spec, fragment):
    with pytest.raises(SweepError) as info:
        parse_axes([spec], base_config())
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_semicolons_separate_points_whose_values_hold_commas():
    config = base_config()
    spec = "data.dataset/masking.mask_prob=text:{a,b}.txt/0.8;python_docs/1.0"
    assert parse_axes([spec], config) == [
        (("data.dataset", "masking.mask_prob"), [("text:{a,b}.txt", 0.8), ("python_docs", 1.0)])
    ]
    assert parse_axes(["masking.ratio=0.1,0.2"], config)[0][1] == [(0.1,), (0.2,)]


def test_values_take_the_type_of_the_config_field():
    axes = parse_axes(
        ["masking.ratio=1,0.5", "seed=2", "model.pre_ln=true", "masking.strategy=span"],
        base_config(),
    )
    values = [points for _, points in axes]
    assert values == [[(1.0,), (0.5,)], [(2,)], [(True,)], [("span",)]]
    assert isinstance(values[0][0][0], float)
    names = [run_name(s) for s in expand(axes)]
    assert names[0] == "masking.ratio=1.0,seed=2,model.pre_ln=true,masking.strategy=span"
    assert run_name({"data.dataset": "text:/a b/*.txt"}) == "data.dataset=text__a_b__.txt"


def test_bad_sweep_on_the_command_line_stops_before_any_run(tmp_path):
    workdir = tmp_path / "sweep"
    result = _sweep_cli(
        "--config=configs/tiny.py", f"--workdir={workdir}", "--sweep=masking.ratoi=1"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --sweep key 'masking.ratoi': 'masking.ratoi' is not in the config"
    )
    assert not workdir.exists()


def test_parallel_slots_divide_the_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in execution._device_envs(2)] == ["0,1", "2,3"]
    with pytest.raises(SweepError):
        execution._device_envs(5)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(execution, "_visible_gpus", lambda: [])
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo")
    envs = execution._device_envs(4)
    assert all("--xla_force_host_platform_device_count=2" in e["XLA_FLAGS"] for e in envs)
    assert all(
        e["XLA_FLAGS"].count("device_count") == 1 and "--xla_foo" in e["XLA_FLAGS"] for e in envs
    )


def test_corruption_and_prediction_sweep_together(tmp_path, capsys):
    """Both rates as one axis (and a piecewise schedule) parse, resolve and launch."""
    from mlm_jax.training.resolve import resolve

    config = base_config()
    axes = parse_axes(
        ["masking.ratio/masking.corruption_ratio=0.15/0.4,0.4/0.15",
         "masking.schedule/masking.piecewise=constant/,piecewise/800:0.15"],
        config,
    )  # fmt: skip
    runs = expand(axes)
    assert len(runs) == 4
    for settings in runs:
        spec = resolve(apply_settings(config, settings)).masking
        assert spec.corruption_ratio == settings["masking.corruption_ratio"]
        assert spec.pieces == (
            ((800, 0.15),) if settings["masking.schedule"] == "piecewise" else ()
        )


def test_every_bad_point_is_named_at_once_with_its_fix_before_anything_is_written(tmp_path):
    """A shortened train.num_steps leaves the config's warmup_steps out of range: once every
    point failed at run time, after sub-workdirs, sweep_failed.json and a report existed."""
    config = small_run_config(str(tmp_path / "data"), num_steps=20)
    config.train.warmup_steps = 100  # as configs/tiny.py has it
    workdir = tmp_path / "sweep"
    with pytest.raises(SweepError) as raised:
        run_sweep(
            config, str(workdir), ["masking.ratio=0.15,0.3", "seed=0,1"],
            base_args=["--config=configs/tiny.py", "--config.train.num_steps=20"],
        )  # fmt: skip
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("4 of 4 runs would stop before training")
    assert len(lines) == 5
    for line in lines[1:]:  # each run: the first bad key it meets, and where to change it
        assert "config.train.warmup_steps=100: expected an integer in 0..20" in line, line
        assert "fix: lower train.warmup_steps, e.g. --config.train.warmup_steps=20" in line
    config.train.warmup_steps = 5
    with pytest.raises(SweepError) as raised:
        run_sweep(config, str(workdir), ["masking.ratio=0.15,1.5"], base_args=[])
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("1 of 2 runs would stop before training")
    assert lines[1] == (
        "  masking.ratio=1.5: config.masking.ratio=1.5: expected a float in (0, 1) "
        "(fix: this point's --sweep value of masking.ratio)"
    )
    assert not workdir.exists() and not (tmp_path / "data").exists()


def test_dry_run_checks_and_prints_but_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    config = small_run_config(str(tmp_path / "data"), num_steps=20)
    run_sweep(config, str(workdir), ["seed=0,1"], base_args=[], dry_run=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.rsplit("--config.", 1)[-1] for line in lines] == ["seed=0", "seed=1"]
    assert not workdir.exists()


def test_an_unreachable_bucket_is_one_line_within_seconds(monkeypatch, tmp_path):

    from mlm_jax.sweep import precheck

    def no_answer(path):
        time.sleep(60)  # a client retrying DNS lookups of a bucket it cannot reach

    monkeypatch.setattr(precheck.files, "exists", no_answer)
    monkeypatch.setattr(precheck, "BUCKET_DEADLINE_S", 1.0)
    config = small_run_config(str(tmp_path / "data"), num_steps=20)
    start = time.monotonic()
    with pytest.raises(SweepError) as raised:
        run_sweep(config, "gs://no-such-bucket/sweep", ["seed=0,1"], base_args=[])
    assert time.monotonic() - start < 10
    assert str(raised.value) == (
        "--workdir=gs://no-such-bucket/sweep: no answer from the bucket in 1 s (network, "
        "credentials: `gcloud auth application-default login`, or the bucket's name?)"
    )
