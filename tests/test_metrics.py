"""After a resume: metrics.jsonl loses events past the restored step (and a torn last line),
TensorBoard is told to hide them."""

import glob
import json
import struct
import time

from mlm_jax.training import metrics


def test_truncate_after_keeps_earlier_events_and_drops_a_torn_line(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path), enabled=True)
    for step in (5, 10, 15):
        writer.write(step, {"train/loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "train/lo')  # killed mid-write
    writer.truncate_after(10)
    events = metrics.read_metrics(str(tmp_path))
    assert [e["step"] for e in events] == [5, 10]
    assert events[1]["train/loss"] == json.loads(json.dumps(0.1))
    writer.close()


def read_tensorboard_events(path):
    """Event protos of one TFRecord events file (length, crc, data, crc per record)."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        data = f.read()
    events, i = [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12 : i + 12 + length])
        events.append(event)
        i += 12 + length + 4
    return events


def test_resumed_writer_hides_recomputed_steps_in_tensorboard(tmp_path):
    first = metrics.MetricsWriter(str(tmp_path))
    for step in (5, 10, 15):
        first.write(step, {"train/loss": 1.0})
    first.close()
    time.sleep(1.1)  # events files are named by the second they were opened in

    resumed = metrics.MetricsWriter(str(tmp_path), start_step=10)
    resumed.write(15, {"train/loss": 2.0})
    resumed.close()

    files = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*")))
    assert len(files) == 2
    starts = [
        e.step
        for e in read_tensorboard_events(files[1])
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    # TensorBoard drops earlier events at steps >= a SessionLog.START's step: 15, not 10.
    assert starts == [11]
    assert [e["step"] for e in metrics.read_metrics(str(tmp_path))] == [5, 10, 15]


def test_restart_before_the_first_checkpoint_keeps_no_events_of_the_killed_attempt(tmp_path):
    """No checkpoint: the run starts again at step 0 and redoes its step-0 eval, so neither file
    may keep the first attempt's events (metrics.jsonl once held two step-0 evals)."""
    first = metrics.MetricsWriter(str(tmp_path))
    first.write(0, {"eval/loss": 9.0})
    first.write(50, {"train/loss": 7.0})
    first.close()
    time.sleep(1.1)  # a second events file

    again = metrics.MetricsWriter(str(tmp_path), start_step=0)
    again.write(0, {"eval/loss": 9.0})
    again.close()

    assert metrics.read_metrics(str(tmp_path)) == [{"step": 0, "eval/loss": 9.0}]
    files = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*")))
    starts = [
        e.step
        for e in read_tensorboard_events(files[-1])
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [0]  # TensorBoard drops the first file's events at steps >= 0
