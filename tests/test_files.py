"""A workdir in a bucket (gs://, here an in-memory fake of GCS): every file a run writes
reaches the bucket, nothing lands in a local folder named "gs:", and a run stopped without
cleaning up resumes from the bucket to the same numbers as an uninterrupted local run."""

import os

import pytest
from etils import epath

from mlm_jax import files
from mlm_jax.data import loader, tokenizer
from mlm_jax.data.spec import DataSpec
from mlm_jax.training import checkpoint, metrics
from mlm_jax.training.run import train_and_evaluate
from tests import interrupt
from tests.configs import resume_test_config, small_run_config


@pytest.fixture
def gcs(bucket, monkeypatch, tmp_path):
    """The fake bucket, with checkpoints kept local: Orbax writes arrays through TensorStore's
    own GCS client, which the fake cannot reach."""
    local = tmp_path / "local_checkpoints"
    monkeypatch.setattr(
        checkpoint,
        "checkpoint_dir",
        lambda workdir: epath.Path(local) / os.fspath(workdir).replace("://", "/"),
    )
    return bucket


def _events(workdir):  # all but the wall-clock rate
    return [
        {k: v for k, v in e.items() if k != "train/tokens_per_s"}
        for e in metrics.read_metrics(workdir)
    ]


@pytest.mark.slow
def test_a_bucket_workdir_holds_the_run_and_resumes_after_a_hard_stop(
    data_dir, gcs, monkeypatch, uninterrupted_run
):
    config, local = resume_test_config(data_dir), uninterrupted_run

    # The first attempt dies at step 15 without closing anything, as under kill -9: only what
    # was uploaded by then counts. Uploads are due only at checkpoints (steps 10 and 20).
    monkeypatch.setattr(metrics, "UPLOAD_EVERY_S", float("inf"))
    close = metrics.MetricsWriter.close
    monkeypatch.setattr(metrics.MetricsWriter, "close", lambda self: None)
    resume = interrupt.stop_at_step(monkeypatch, 15)
    bucket = "gs://bucket/runs/small"
    with pytest.raises(interrupt.Stop):
        train_and_evaluate(config, bucket)
    resume()
    monkeypatch.setattr(metrics.MetricsWriter, "close", close)
    assert interrupt.wait_for_checkpoint(bucket, 10) == 10

    cut = [e["step"] for e in metrics.read_metrics(bucket)]
    assert cut == [0, 4, 8, 10]  # through the step-10 checkpoint; the step-12 event was not due
    train_and_evaluate(config, bucket)  # resumes from step 10

    assert _events(bucket) == _events(local)
    names = {url.removeprefix(bucket + "/") for url in gcs.objects()}
    assert {"config.json", "metrics.jsonl", "tokenizer/vocab.txt", "tokenizer/.complete"} <= names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
    assert files.read_text(f"{bucket}/config.json") == open(f"{local}/config.json").read()
    assert not os.path.exists("gs:")


def test_a_tokenizer_in_a_bucket_loads_as_the_local_one(data_dir, tmp_path, gcs):
    config = small_run_config(data_dir)
    local = loader.keep_in_workdir(
        loader.get_tokenizer(DataSpec.from_config(config.data)), str(tmp_path / "run")
    )
    folder = str(tmp_path / "run" / "tokenizer")
    files.copy_dir(folder, "gs://bucket/vocab")
    text = ["Return the number of items in a container."]
    for path in ("gs://bucket/vocab", "gs://bucket/vocab/vocab.txt"):
        config.data.tokenizer = path
        DataSpec.from_config(config.data)
        assert tokenizer.load_tokenizer(path).encode(text) == local.encode(text)
    config.data.tokenizer = "gs://bucket/missing"
    with pytest.raises(ValueError, match="data.tokenizer='gs://bucket/missing': no such"):
        DataSpec.from_config(config.data)
    assert not os.path.exists("gs:")
