"""mlm_jax.sweep and its command line experiments/sweep.py: axes, skipping and resuming,
failures, the report."""

import csv
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import matplotlib.image
import pytest

from mlm_jax import files
from mlm_jax.config.defaults import base_config
from mlm_jax.sweep import SweepError, execution, run_state
from mlm_jax.sweep import finetuning as sweep_finetuning
from mlm_jax.sweep.axes import apply_settings, expand, format_value, parse_axes, run_name
from mlm_jax.sweep.execution import run_sweep
from mlm_jax.sweep.finetuning import make_plan
from mlm_jax.sweep.report import write_markdown, write_report
from mlm_jax.training import checkpoint
from mlm_jax.training.workdir import LOCK_FILE
from tests.configs import small_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def config_overrides(config) -> list[str]:
    """`--config.x=y` flags that turn configs/tiny.py into `config`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs", "tiny.py"))
    tiny_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_module)
    tiny = dict(_flat(tiny_module.get_config().to_dict()))
    wanted = dict(_flat(config.to_dict()))
    return [f"--config.{k}={format_value(v)}" for k, v in wanted.items() if tiny.get(k) != v]


def small_overrides(data_dir: str, num_steps: int) -> list[str]:
    """`--config.x=y` flags that turn configs/tiny.py into tests/configs.py's small run."""
    return config_overrides(small_run_config(data_dir, num_steps=num_steps))


def sweep_run_config(data_dir: str, num_steps: int):
    """The small run as the sweep tests train it. A constant learning rate keeps the train
    step one program whatever train.num_steps (a decay's length is compiled into it), so the
    SIGTERM test's runs load what the sweep test's compiled from the compilation cache."""
    config = small_run_config(data_dir, num_steps=num_steps)
    config.train.lr_schedule = "constant"
    return config


def _sweep_cli(*args, env_extra=None):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))  # one device each
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "sweep.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def _mtimes(directory: str) -> dict[str, float]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = os.stat(path).st_mtime_ns
    return out


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_trains_skips_finished_resumes_missing_and_reports(data_dir, tmp_path, caplog):
    """One point as a --parallel subprocess from the command line; then the sweep grown by a
    point, rerun and resumed in this process (the same run_sweep, without a driver's imports
    and a run's each time); then --report from the command line."""
    config = sweep_run_config(data_dir, num_steps=10)
    config.checkpoint.every_steps = config.eval.every_steps = 5
    config.eval.nll_bound_rates = 4  # the bound's column is checked below
    flags = ["--config=configs/tiny.py", *config_overrides(config)]
    workdir = str(tmp_path / "sweep")
    runs = {r: os.path.join(workdir, f"masking.ratio={r}") for r in ("0.15", "0.4")}
    first = _sweep_cli(*flags, f"--workdir={workdir}", "--sweep=masking.ratio=0.4", "--parallel=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.path.exists(os.path.join(runs["0.4"], "sweep.log"))  # ran as a subprocess

    def sweep() -> str:
        caplog.clear()
        with caplog.at_level("INFO", logger="mlm_jax"):
            run_sweep(config, workdir, ["masking.ratio=0.15,0.4"], base_args=flags)
        return caplog.text

    # A point added: the finished run is skipped, the new one trained.
    said = sweep()
    assert "1 of 2 runs to train" in said and said.count("skipping finished run") == 1
    for run in runs.values():
        assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int)[-1] == "10"

    # Rerunning a finished sweep trains nothing: no file of either run changes.
    before = {r: _mtimes(d) for r, d in runs.items()}
    said = sweep()
    assert "0 of 2 runs to train" in said
    assert said.count("skipping finished run") == 2
    for r, d in runs.items():
        assert _mtimes(d) == before[r], r

    # An interrupted run (its last checkpoint and marker gone) is the only one trained again.
    import shutil

    shutil.rmtree(os.path.join(runs["0.4"], "checkpoints", "10"))
    os.remove(os.path.join(runs["0.4"], run_state.DONE_MARKER))
    said = sweep()
    assert "1 of 2 runs to train" in said
    assert "resumed from the checkpoint of step 5" in said
    assert _mtimes(runs["0.15"]) == before["0.15"]
    assert os.path.isdir(os.path.join(runs["0.4"], "checkpoints", "10"))

    # --report regenerates everything from the workdirs alone.
    for name in os.listdir(workdir):
        if name.startswith("results.") or name.endswith(".png"):
            os.remove(os.path.join(workdir, name))
    report = _sweep_cli(f"--workdir={workdir}", "--report")
    assert report.returncode == 0, report.stderr[-3000:]
    rows = {row["masking.ratio"]: row for row in _read_csv(os.path.join(workdir, "results.csv"))}
    assert set(rows) == {"0.15", "0.4"}
    for row in rows.values():
        assert row["status"] == "done" and row["step"] == "10"
        for key in ("eval_loss", "eval_accuracy", "eval_nll_bound", "own_loss", "own_accuracy"):
            assert math.isfinite(float(row[key])), (key, row)
        assert int(row["tokens_seen"]) == 10 * 8 * 64  # steps x batch x seq_len
    # 0.15 trains at the eval masking, so both columns are the same numbers; 0.4 does not.
    assert rows["0.15"]["own_loss"] == rows["0.15"]["eval_loss"]
    events = [json.loads(x) for x in open(os.path.join(runs["0.4"], "metrics.jsonl"))]
    last_own = [e for e in events if "eval_own/loss" in e][-1]
    assert float(rows["0.4"]["own_loss"]) == pytest.approx(last_own["eval_own/loss"], rel=1e-5)
    markdown = open(os.path.join(workdir, "results.md")).read()
    assert "| 0.15 |" in markdown and "| 0.4 |" in markdown
    for png in ("metric_vs_masking.ratio.png", "eval_curves.png"):
        image = matplotlib.image.imread(os.path.join(workdir, png))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # a --parallel=2 sweep in a subprocess, stopped by SIGTERM mid-training
def test_sigterm_to_a_parallel_driver_stops_its_runs_which_save(data_dir, tmp_path):
    """A sweep driver owns its runs: SIGTERM stops them (each saves), then the driver. (After
    the test above, whose steps, the same programs, its runs load from the compilation cache.)"""
    sweep = tmp_path / "sweep"
    config = sweep_run_config(data_dir, num_steps=100000)
    config.checkpoint.every_steps = config.eval.every_steps = 100000
    config.log.every_steps = 1
    args = ["--config=configs/tiny.py", f"--workdir={sweep}", "--sweep=masking.ratio=0.15,0.4",
            *config_overrides(config), "--parallel=2"]  # fmt: skip
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    driver = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "experiments", "sweep.py"), *args],
        env=env, cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = [sweep / "masking.ratio=0.15", sweep / "masking.ratio=0.4"]
    deadline = time.time() + 400
    while not all((r / "metrics.jsonl").exists() for r in runs):  # both are stepping
        assert driver.poll() is None and time.time() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.5)
    pids = [json.loads((r / LOCK_FILE).read_text())["pid"] for r in runs]
    driver.send_signal(signal.SIGTERM)
    stderr = driver.communicate(timeout=300)[1]
    assert driver.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "sweep stopped by SIGTERM" in stderr
    assert not any(_alive(pid) for pid in pids)  # no orphan keeps training
    for run in runs:
        assert checkpoint.latest_step(str(run)) is not None  # each saved on its SIGTERM
        assert not (run / run_state.FAILED_MARKER).exists()


def _fake_trainer(fail_ratio):
    """Stands in for train_and_evaluate: writes what a finished run leaves, or raises."""

    def train(config, run_dir):  # (run_dir: a local folder or gs://)
        if float(config.masking.ratio) == fail_ratio:
            raise RuntimeError("boom: out of memory at step 3")
        last = checkpoint.checkpoint_dir(run_dir) / str(config.train.num_steps)
        last.mkdir(parents=True)
        (last / "commit_success.txt").write_text("")  # a complete checkpoint
        files.write_text(files.join(run_dir, "config.json"), config.to_json())
        loss = 5.0 + config.masking.ratio + 0.1 * config.seed  # known per-run numbers
        events = [
            json.dumps({"step": step, "eval/loss": loss, "eval/accuracy": 0.5}) + "\n"
            for step in (0, config.train.num_steps)
        ]
        files.write_text(files.join(run_dir, "metrics.jsonl"), "".join(events))

    return train


def test_failed_run_is_recorded_and_the_others_finish(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(execution, "_train_in_process", _fake_trainer(fail_ratio=0.3))
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    workdir = str(tmp_path / "sweep")
    with caplog.at_level("INFO", logger="mlm_jax.sweep"):
        run_sweep(config, workdir, ["masking.ratio=0.3,0.5", "seed=0,1,2"], base_args=[])
    # Progress over runs: each start numbered, each end counted with the failures so far.
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(" ")[0] for m in said if " training " in m] == [f"[{k}/6]" for k in range(1, 7)]
    ends = [m for m in said if m.startswith("[") and " done] " in m]
    assert len(ends) == 6 and ends[-1].startswith("[6/6 done]") and "(3 failed)" in ends[-1]
    assert "min to go" in ends[0] and "min to go" not in ends[-1]
    rows = _read_csv(os.path.join(workdir, "results.csv"))
    assert len(rows) == 6
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert {r["masking.ratio"] for r in by_status["failed"]} == {"0.3"}
    assert all("RuntimeError: boom" in r["reason"] for r in by_status["failed"])
    assert len(by_status["done"]) == 3
    # results.md: mean and sample standard deviation over the three seeds.
    losses = [5.5, 5.6, 5.7]
    line = [x for x in open(os.path.join(workdir, "results.md")) if x.startswith("| 0.5 |")][0]
    expected = f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
    assert expected in line, line
    assert "masking.ratio=0.3,seed=0: failed" in open(os.path.join(workdir, "results.md")).read()
    # Finished elsewhere since (e.g. its --launch=print command): done, whatever the old marker.
    finished_elsewhere = os.path.join(workdir, "masking.ratio=0.3,seed=0")
    _fake_trainer(fail_ratio=None)(
        apply_settings(config, {"masking.ratio": 0.3, "seed": 0}), finished_elsewhere
    )
    write_report(workdir)
    rows = {r["run"]: r for r in _read_csv(os.path.join(workdir, "results.csv"))}
    assert rows["masking.ratio=0.3,seed=0"]["status"] == "done"
    assert rows["masking.ratio=0.3,seed=1"]["status"] == "failed"


def test_a_sweep_in_a_bucket_trains_fine_tunes_reports_and_skips_what_is_done(
    bucket, tmp_path, monkeypatch
):
    from mlm_jax.finetuning import loop

    trained, fake = [], _fake_trainer(fail_ratio=0.5)

    def train(config, run_dir):
        trained.append(run_dir.rsplit("/", 1)[1])
        fake(config, run_dir)

    def fake_finetune(run_dir, task, out, **kwargs):
        files.write_text(files.join(out, "result.json"), json.dumps({"dev/accuracy": 0.75}))

    monkeypatch.setattr(execution, "_train_in_process", train)
    monkeypatch.setattr(loop, "finetune", fake_finetune)
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    workdir = "gs://bucket/sweep"
    plan = make_plan(["tsv:a/t/train.tsv,a/t/dev.tsv"])
    for _ in range(2):
        run_sweep(config, workdir, ["masking.ratio=0.3,0.5"], base_args=[], finetune=plan)
    # The finished run is skipped the second time; the failed one is tried again.
    assert trained == ["masking.ratio=0.3", "masking.ratio=0.5", "masking.ratio=0.5"]
    table = csv.DictReader(io.StringIO(files.read_text(f"{workdir}/results.csv")))
    rows = {r["masking.ratio"]: r for r in table}
    assert rows["0.3"]["status"] == "done" and rows["0.3"]["finetune_accuracy"] == "0.75"
    assert rows["0.3"]["finetune_accuracy/t"] == rows["0.3"]["finetune_accuracy/t/seed=0"] == "0.75"
    assert files.exists(f"{workdir}/masking.ratio=0.3/finetune/t/seed=0/sweep_request.json")
    assert rows["0.5"]["status"] == "failed" and "boom" in rows["0.5"]["reason"]
    assert "| 0.3 |" in files.read_text(f"{workdir}/results.md")
    for png in ("metric_vs_masking.ratio.png", "eval_curves.png"):
        data = io.BytesIO(bucket.cat_file(f"{workdir}/{png}"))
        assert matplotlib.image.imread(data, format="png").shape[0] > 100
    assert not os.path.exists("gs:")  # (the test runs in tmp_path)


def test_values_that_would_share_a_directory_are_refused(tmp_path):
    config = base_config()
    spec = "data.dataset=text:/corpora/wiki en/*.txt,text:/corpora/wiki_en/*.txt"
    with pytest.raises(SweepError, match="would share the directory"):
        run_sweep(config, str(tmp_path / "sweep"), [spec], base_args=[], launch="print")
    assert not os.path.exists(tmp_path / "sweep")


def test_finetuning_is_redone_for_another_task_seed_or_checkpoint(tmp_path, monkeypatch):
    from mlm_jax.finetuning import loop

    calls = []

    def fake_finetune(run_dir, task, out, *, seed, **kwargs):
        calls.append((task, seed))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"dev/accuracy": 0.5 + 0.1 * len(calls)}, f)

    monkeypatch.setattr(loop, "finetune", fake_finetune)
    config = small_run_config(str(tmp_path / "unused"), num_steps=7)
    run_dir = str(tmp_path / "run")
    _fake_trainer(fail_ratio=None)(config, run_dir)
    plan = sweep_finetuning.make_plan(["tsv:x/ab/a,b", "tsv:x/cd/c,d"], seeds=["0", "1"])
    for _ in range(2):  # the same requests again reuse every result
        sweep_finetuning.finetune_runs(str(tmp_path), ["run"], plan)
    assert calls == [
        ("tsv:x/ab/a,b", 0),
        ("tsv:x/ab/a,b", 1),
        ("tsv:x/cd/c,d", 0),
        ("tsv:x/cd/c,d", 1),
    ]
    assert _rounded(run_state.finetune_results(run_dir, 7)) == {
        "ab": {0: 0.6, 1: 0.7},
        "cd": {0: 0.8, 1: 0.9},
    }
    longer = small_run_config(str(tmp_path / "unused"), num_steps=9)
    _fake_trainer(fail_ratio=None)(longer, run_dir)  # trained further since: step 9
    assert run_state.finetune_results(run_dir, 9) == {}  # the report shows no stale result
    sweep_finetuning.finetune_one(run_dir, "tsv:x/cd/c,d", 1, plan)
    assert calls[-1] == ("tsv:x/cd/c,d", 1) and len(calls) == 5
    assert _rounded(run_state.finetune_results(run_dir, 9)) == {"cd": {1: 1.0}}


def _rounded(results: dict) -> dict:
    return {task: {s: round(v, 9) for s, v in by_seed.items()} for task, by_seed in results.items()}


def test_an_older_sweeps_single_finetune_result_still_reports(tmp_path):
    """Before several tasks and seeds, a sweep wrote RUN/finetune/result.json itself."""
    out = tmp_path / "run" / "finetune"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"dev/accuracy": 0.625}))
    request = {"task": "tsv:/data/order/train.tsv,/data/order/dev.tsv", "epochs": 3, "step": 7}
    (out / "sweep_request.json").write_text(json.dumps(request))
    assert run_state.finetune_results(str(tmp_path / "run"), 7) == {"order": {0: 0.625}}
    assert run_state.finetune_results(str(tmp_path / "run"), 8) == {}


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


def test_a_mean_over_fewer_runs_than_the_seeds_says_so(tmp_path):
    """Three finished seeds, a fine-tune result for two: the seeds column says 3, and the
    fine-tune mean (over 2) is marked (n=2)."""
    rows = [
        {"run": f"seed={s}", "masking.ratio": 0.3, "seed": s, "status": "done",
         "eval_loss": 5.0 + s, "finetune_accuracy": (0.6 if s < 2 else None)}
        for s in range(3)
    ]  # fmt: skip
    path = str(tmp_path / "results.md")
    write_markdown(path, [["masking.ratio"], ["seed"]], rows)
    line = [x for x in open(path) if x.startswith("| 0.3 |")][0]
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    header = [c.strip() for c in open(path).readline().strip().strip("|").split("|")]
    row = dict(zip(header, cells))
    assert row["seeds"] == "3"
    assert row["eval_loss"] == "6.0000 ± 1.0000"
    assert row["finetune_accuracy"] == "0.6000 ± 0.0000 (n=2)"


def test_baseline_adds_paired_t_intervals_checked_by_hand(tmp_path):
    """Made-up losses of 3 seeds at three ratios, baseline 0.15. Against a t table
    (t(0.975, 2) = 4.303): ratio 0.3 differs by -0.2, -0.1, -0.3 -> mean -0.2, sd 0.1,
    half-width 4.303 * 0.1 / sqrt(3) = 0.2484: [-0.4484, +0.0484], holds 0, no mark; ratio 0.6
    by +0.3, +0.5, +0.4 -> [+0.1516, +0.6484], marked. Its plot is written too."""
    from mlm_jax.sweep import baseline, plots

    base, low, high = [5.0, 5.2, 4.9], [4.8, 5.1, 4.6], [5.3, 5.7, 5.3]
    rows = [
        {"run": f"r{ratio}s{s}", "masking.ratio": ratio, "seed": s, "status": "done",
         "eval_loss": losses[s], "eval_accuracy": 0.3, "own_loss": None, "own_accuracy": None}
        for ratio, losses in ((0.15, base), (0.3, low), (0.6, high)) for s in range(3)
    ]  # fmt: skip
    axes = [["masking.ratio"], ["seed"]]
    metrics = ["eval_loss", "eval_accuracy"]
    paired = baseline.paired_differences(axes, rows, "masking.ratio=0.15", metrics)
    by_ratio = {e["settings"]["masking.ratio"]: e for e in paired["entries"]}
    assert sorted(by_ratio) == [0.3, 0.6] and by_ratio[0.3]["n"] == 3
    for ratio, (mean, lo, hi) in ((0.3, (-0.2, -0.4484, 0.0484)), (0.6, (0.4, 0.1516, 0.6484))):
        got = by_ratio[ratio]["eval_loss"]
        assert got == pytest.approx((mean, lo, hi), abs=2e-4), (ratio, got)
    assert by_ratio[0.3]["eval_accuracy"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    lines = baseline.markdown_lines(paired, metrics)
    row_03 = [x for x in lines if x.startswith("| 0.3 |")][0]
    row_06 = [x for x in lines if x.startswith("| 0.6 |")][0]
    assert "-0.2000 [-0.4484, +0.0484] |" in row_03 and "*" not in row_03.split("|")[3]
    assert "+0.4000 [+0.1516, +0.6484] * |" in row_06
    path = plots.plot_paired(str(tmp_path), paired, metrics)
    assert matplotlib.image.imread(path).shape[0] > 100
    with pytest.raises(SweepError, match="not swept"):
        baseline.parse_baseline("masking.strategy=uniform", axes)
    with pytest.raises(SweepError, match="no finished run"):
        baseline.paired_differences(axes, rows, "masking.ratio=0.45", metrics)


def test_the_likelihood_bound_reaches_the_results_and_the_paired_table():
    """eval/nll_bound of the last eval is a results column and a paired metric; a run that
    logged none (an older run, or eval.nll_bound_rates=0) leaves the cell empty."""
    from mlm_jax.sweep.report import paired_metrics

    events = [
        {"step": 5, "eval/loss": 6.0, "eval/accuracy": 0.0, "eval/nll_bound": 6.2},
        {"step": 10, "eval/loss": 5.0, "eval/accuracy": 0.1, "eval/nll_bound": 5.3},
    ]
    assert run_state.final_eval(events)["eval_nll_bound"] == 5.3
    assert run_state.final_eval([{"step": 10, "eval/loss": 5.0}])["eval_nll_bound"] is None
    assert "eval_nll_bound" in paired_metrics([])


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


def test_two_tasks_two_finetune_seeds_give_per_task_paired_intervals(tmp_path, monkeypatch):
    """Made-up dev accuracies for 2 ratios x 3 pretraining seeds x 2 tasks x 2 fine-tuning seeds.
    Each run's task score is the mean over its fine-tuning seeds; the paired difference to the
    baseline ratio is taken per pretraining seed; the interval's quantile is scipy's t(0.975, 2).
    The report's csv, paired table and plot carry each task and the mean over tasks."""
    import numpy as np
    from scipy import stats

    from mlm_jax.finetuning import loop

    rng = np.random.default_rng(7)
    made_up = {
        (ratio, seed, task, ft_seed): round(float(rng.uniform(0.5, 0.9)), 3)
        for ratio in (0.15, 0.3) for seed in range(3) for task in ("order", "same") for ft_seed in (0, 1)
    }  # fmt: skip

    def fake_finetune(run_dir, spec, out, *, seed, **kwargs):
        settings = dict(part.split("=") for part in os.path.basename(run_dir).split(","))
        task = spec.split("/")[-2]  # tsv:<dir>/<task>/train.tsv,...
        accuracy = made_up[(float(settings["masking.ratio"]), int(settings["seed"]), task, seed)]
        files.write_text(files.join(out, "result.json"), json.dumps({"dev/accuracy": accuracy}))

    monkeypatch.setattr(execution, "_train_in_process", _fake_trainer(fail_ratio=None))
    monkeypatch.setattr(loop, "finetune", fake_finetune)
    workdir = str(tmp_path / "sweep")
    specs = [f"tsv:{tmp_path}/{t}/train.tsv,{tmp_path}/{t}/dev.tsv" for t in ("order", "same")]
    run_sweep(
        small_run_config(str(tmp_path / "unused"), num_steps=7),
        workdir,
        ["masking.ratio=0.15,0.3", "seed=0,1,2"],
        base_args=[],
        finetune=make_plan(specs, seeds=["0", "1"]),
        baseline="masking.ratio=0.15",
    )

    def task_mean(ratio, seed, task):
        return (made_up[(ratio, seed, task, 0)] + made_up[(ratio, seed, task, 1)]) / 2

    def run_mean(ratio, seed):
        return (task_mean(ratio, seed, "order") + task_mean(ratio, seed, "same")) / 2

    rows = {r["run"]: r for r in _read_csv(os.path.join(workdir, "results.csv"))}
    row = rows["masking.ratio=0.3,seed=2"]
    assert float(row["finetune_accuracy/same/seed=1"]) == made_up[(0.3, 2, "same", 1)]
    assert float(row["finetune_accuracy/order"]) == pytest.approx(task_mean(0.3, 2, "order"))
    assert float(row["finetune_accuracy"]) == pytest.approx(run_mean(0.3, 2))

    def interval(score):
        diffs = np.array([score(0.3, s) - score(0.15, s) for s in range(3)])
        half = stats.t.ppf(0.975, df=2) * diffs.std(ddof=1) / np.sqrt(3)
        return f"{diffs.mean():+.4f} [{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}]"

    markdown = open(os.path.join(workdir, "results.md")).read().splitlines()
    header_at = next(i for i, line in enumerate(markdown) if "| seed pairs |" in line)
    header = [c.strip() for c in markdown[header_at].strip("|").split("|")]
    cells = [c.strip() for c in markdown[header_at + 2].strip("|").split("|")]
    paired = dict(zip(header, cells))
    assert paired["masking.ratio"] == "0.3" and paired["seed pairs"] == "3"
    for column, score in (
        ("Δ finetune_accuracy", run_mean),
        ("Δ finetune_accuracy/order", lambda r, s: task_mean(r, s, "order")),
        ("Δ finetune_accuracy/same", lambda r, s: task_mean(r, s, "same")),
    ):
        assert paired[column].removesuffix(" *") == interval(score), column
    plot = matplotlib.image.imread(os.path.join(workdir, "paired_vs_baseline.png"))
    assert plot.shape[1] > 7 * 400  # a panel per metric: 4 MLM scores, the mean, 2 tasks


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
    import time

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
