"""The log a user reads: time then message, no absl prefix, library chatter gone, and the
end-of-run hints and vocabulary warnings that say what is true."""

import logging
import re
import subprocess
import sys

from mlm_jax.training import metrics

# A command as mlm_jax.main runs one: absl's app.run, then logs.configure().
COMMAND = """
import logging
from absl import app
from mlm_jax import logs

def main(argv):
    logs.configure()
    logging.getLogger("mlm_jax.training.run").info("resumed from the checkpoint of step 10")
    logging.getLogger("mlm_jax.training.run").warning("SIGTERM received")
    logging.getLogger("apache_beam.typehints").info('Converting string literal type hint to Any')
    logging.warning("apitools not found, and bigquery client libraries are not available")
    logging.getLogger("some_library").warning("a real warning stays")

app.run(main)
"""


def test_lines_are_time_then_message_and_library_noise_is_gone():
    done = subprocess.run(
        [sys.executable, "-c", COMMAND], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    stamp = r"\d\d:\d\d:\d\d"
    assert len(lines) == 3, lines
    assert re.fullmatch(f"{stamp} resumed from the checkpoint of step 10", lines[0]), lines
    assert re.fullmatch(f"{stamp} warning: SIGTERM received", lines[1]), lines
    assert re.fullmatch(f"{stamp} warning: a real warning stays", lines[2]), lines


def test_the_tensorboard_hint_says_how_to_install_it_when_it_is_not(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mlm_jax")
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    metrics.log_summary("/tmp/run", {"eval/loss": 1.0}, 5)
    assert "  pip install tensorboard && tensorboard --logdir=/tmp/run/tensorboard" in caplog.text
    caplog.clear()
    monkeypatch.setattr(metrics.shutil, "which", lambda name: f"/usr/bin/{name}")
    metrics.log_summary("/tmp/run", {"eval/loss": 1.0}, 5)
    assert "  tensorboard --logdir=/tmp/run/tensorboard" in caplog.text
    assert "pip install" not in caplog.text


def test_a_vocabulary_smaller_than_asked_is_a_warning(caplog):
    from mlm_jax.data.tokenizer import train_wordpiece

    texts = ["alpha beta gamma delta"] * 50  # a few hundred pieces at most
    with caplog.at_level(logging.WARNING, logger="mlm_jax"):
        tokenizer = train_wordpiece(texts, vocab_size=4096, lowercase=True)
    assert tokenizer.vocab_size < 4096
    assert (
        f"the corpus gave a {tokenizer.vocab_size}-token vocabulary, not the 4096 asked"
        in caplog.text
    )
