"""hf export's model card: README.md with the Hub's metadata block, read back by huggingface_hub's
own ModelCard (the parser the Hub uses), naming the masking, data, steps and eval numbers."""

import json

import pytest

from mlm_jax.config.defaults import base_config
from mlm_jax.hf import model_card
from mlm_jax.training import metrics

huggingface_hub = pytest.importorskip(
    "huggingface_hub",
    reason="huggingface_hub is not installed: pip install -r requirements-test.txt",
)


def _run_dir(tmp_path):
    config = base_config()
    config.masking.ratio = 0.3
    config.masking.strategy = "whole_word"
    config.model.vocab_size = 8192
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    events = [
        {"step": 0, "eval/loss": 9.04, "eval/accuracy": 0.0},
        {"step": 50, "train/loss": 6.1},
        {
            "step": 100,
            "eval/loss": 5.5,
            "eval/accuracy": 0.18,
            "eval/perplexity": 244.69,
            "eval/nll_bound": 5.75,
        },
        {"step": 150, "eval/loss": 5.2, "eval/accuracy": 0.2},  # after the exported checkpoint
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    command = "python -m mlm_jax.main --config=configs/tiny.py --workdir=/tmp/run"
    (tmp_path / "commands.txt").write_text(command + "\n")
    return config, command


def test_the_card_parses_as_a_hub_model_card_and_names_what_the_run_was(tmp_path):
    config, command = _run_dir(tmp_path)
    events = metrics.read_metrics(str(tmp_path))
    text = model_card.run_card(str(tmp_path), step=100, num_params=1_234_567, events=events)
    (tmp_path / "README.md").write_text(text)
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "fill-mask"
    assert "mlm_jax" in card.data.tags and "bert" in card.data.tags
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"eval/loss": 5.5, "eval/accuracy": 0.18, "eval/perplexity": 244.69}
    assert {r.task_type for r in card.data.eval_results} == {"fill-mask"}
    assert {r.dataset_type for r in card.data.eval_results} == {"python_docs"}
    body = card.text
    assert "- `masking.ratio`: `0.3`" in body
    assert "- `masking.strategy`: `'whole_word'`" in body
    assert "0.15 uniform, 0.8/0.1 replacement" in body  # the common eval masking, named
    assert "eval/nll_bound 5.7500" in body  # the likelihood bound, beside the MLM scores
    assert "1,234,567 parameters" in body
    assert f"100 steps of 32 rows: {100 * 32 * config.data.seq_len:,} tokens seen" in body
    assert "a WordPiece vocabulary of 8192" in body
    assert command in body


def test_a_run_without_evaluations_or_recorded_command_still_gets_a_card(tmp_path):
    _run_dir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "commands.txt").unlink()
    (tmp_path / "README.md").write_text(model_card.run_card(str(tmp_path), 10, 5, events=[]))
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results is None
    assert "No held-out evaluation was logged." in card.text
    assert "not recorded" in card.text
