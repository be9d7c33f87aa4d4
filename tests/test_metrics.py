"""metrics.jsonl after a resume: events past the restored step go, a torn last line too."""

import json

from mlm_jax import metrics


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
