"""log.wandb_project: the run's scalars, resolved config and sweep axes reach W&B's own files,
offline (WANDB_MODE=offline: no network, no account), read back with W&B's protobuf schema."""

import glob
import json
import struct

import pytest

from mlm_jax.config.defaults import base_config
from mlm_jax.training import metrics, metrics_wandb

wandb = pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[wandb]'")


def _records(path):
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte file header, 32 KiB
    blocks of checksum / length / type-framed pieces), each a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # the padding at a block's end
            pos += left
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


def _name(item) -> str:
    return item.key or "/".join(item.nested_key)  # ("train/loss" arrives as nested keys)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))


def test_a_sweep_runs_scalars_config_and_axes_are_in_the_offline_run(tmp_path, offline):
    sweep = tmp_path / "sweep"
    workdir = sweep / "masking.ratio=0.3"
    workdir.mkdir(parents=True)
    settings = {"masking.ratio": 0.3}
    (sweep / "sweep.json").write_text(
        json.dumps({"runs": [{"name": workdir.name, "settings": settings}]})
    )
    config = base_config()
    config.log.wandb_project = "mlm-test"
    config.masking.ratio = 0.3
    events = [(0, {"eval/loss": 9.5, "eval/accuracy": 0.0}), (5, {"train/loss": 7.25})]
    writer = metrics.MetricsWriter(
        str(workdir), wandb=metrics_wandb.open_run(config, str(workdir), enabled=True)
    )
    for step, scalars in events:
        writer.write(step, scalars)
    writer.close()

    (path,) = glob.glob(str(workdir / "wandb" / "offline-run-*" / "*.wandb"))
    records = list(_records(path))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name) == ("mlm-test", "sweep", workdir.name)
    sent = {u.key: json.loads(u.value_json) for u in run.config.update}
    as_json = json.loads(config.to_json())  # (tuples are JSON lists)
    assert sent["masking"] == as_json["masking"] and sent["model"] == as_json["model"]
    assert sent["sweep_axes"] == settings
    history = [
        {name: json.loads(i.value_json) for i in r.history.item if (name := _name(i))[0] != "_"}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert history == [{"step": s, **scalars} for s, scalars in events]
    assert history == metrics.read_metrics(str(workdir))  # the same numbers as metrics.jsonl


def test_a_resumed_run_continues_its_wandb_run(tmp_path, offline):
    config = base_config()
    config.log.wandb_project = "mlm-test"
    ids = []
    for _ in range(2):
        run = metrics_wandb.open_run(config, str(tmp_path), enabled=True)
        ids.append(run.run.id)
        run.finish()
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id").read_text().strip()
    assert metrics_wandb.open_run(config, str(tmp_path), enabled=False) is None


def test_without_wandb_the_project_key_names_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError) as raised:
        metrics_wandb.check_available("mlm")
    assert str(raised.value) == (
        "config.log.wandb_project='mlm': logging to W&B needs wandb, which is not installed: "
        "pip install -e '.[wandb]'"
    )
    metrics_wandb.check_available("")  # not asked for: nothing needed
