"""The model card (README.md) an `hf export` of a run carries, with the Hub's metadata block.

What makes an exported encoder a research artifact rather than weights: its architecture, the
masking it was trained with (and the common eval masking its numbers are at), the corpus and
tokenizer, how many steps and tokens it saw, its held-out scores, and the command that trained
it. Everything comes from the run's own files (config.json, metrics.jsonl, commands.txt); the
metadata block (`---` YAML) is what the Hub reads: library, pipeline, tags, and the eval
numbers as a model-index, so `huggingface-cli upload` publishes a documented model.
"""

from __future__ import annotations

import json

import yaml

from mlm_jax import files

COMMANDS_FILE = "commands.txt"  # (training/run.py's: each start's command line)
_EVAL_KEYS = (
    "eval/loss", "eval/accuracy", "eval/perplexity", "eval/masked_fraction",
    "eval/nll_bound",  # nats per token, the likelihood bound (training/bound.py)
)  # fmt: skip


def run_card(workdir: str, step: int, num_params: int, events: list[dict]) -> str:
    """README.md for the export of `workdir`'s checkpoint of `step`; `events` are the run's
    metrics.jsonl (training/metrics.py's read_metrics), passed in since hf/ sits below training/."""
    config = json.loads(files.read_text(files.join(workdir, "config.json")))
    evals = [e for e in events if "eval/loss" in e and e["step"] <= step]
    last_eval = evals[-1] if evals else {}
    name = workdir.rstrip("/").rsplit("/", 1)[-1]
    return (
        "---\n"
        + yaml.safe_dump(_metadata(name, config, last_eval), sort_keys=False)
        + "---\n\n"
        + _body(name, workdir, config, step, num_params, last_eval)
    )


def _metadata(name: str, config: dict, last_eval: dict) -> dict:
    arch = config["model"]["arch"]
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "tags": ["mlm_jax", "masked-language-modeling", arch, "jax"],
    }
    scores = [
        {"type": key.split("/")[1], "value": round(float(last_eval[key]), 6), "name": key}
        for key in ("eval/loss", "eval/accuracy", "eval/perplexity")
        if key in last_eval
    ]
    if scores:
        metadata["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "fill-mask", "name": "Masked language modeling"},
                        "dataset": {
                            "type": config["data"]["dataset"],
                            "name": f"{config['data']['dataset']} (held-out split)",
                        },
                        "metrics": scores,
                    }
                ],
            }
        ]
    return metadata


def _body(name, workdir, config, step, num_params, last_eval) -> str:
    model, masking, data, train = (
        config["model"],
        config["masking"],
        config["data"],
        config["train"],
    )
    tokens = step * train["batch_size"] * data["seq_len"]
    lines = [
        f"# {name}",
        "",
        f"A {model['arch']} masked language model trained with mlm_jax (JAX/Flax), exported "
        "for transformers' `AutoModelForMaskedLM`.",
        "",
        "## Architecture",
        "",
        f"{model['arch']}: {model['num_layers']} layers, hidden size {model['hidden_size']}, "
        f"{model['num_heads']} heads, intermediate size {model['intermediate_size']}, vocabulary "
        f"{model['vocab_size']}, {num_params:,} parameters.",
        "",
        "## Masking",
        "",
        _settings(masking, "masking"),
        "",
        "## Data and tokenizer",
        "",
        f"Corpus `{data['dataset']}`, rows of {data['seq_len']} tokens (packing "
        f"`{data['packing']}`), {data['heldout_fraction']} held out. Tokenizer: "
        + (f"`{data['tokenizer']}`" if data["tokenizer"] else
           f"a WordPiece vocabulary of {model['vocab_size']} trained on the training split")
        + f" (lowercase: {data['lowercase']}).",
        "",
        "## Training",
        "",
        f"{step:,} steps of {train['batch_size']} rows: {tokens:,} tokens seen "
        f"(peak learning rate {train['learning_rate']}, {train['lr_schedule']} schedule, "
        f"seed {config['seed']}).",
        "",
        "## Evaluation",
        "",
        _evaluation(config["eval"], last_eval),
        "",
        "## How it was trained",
        "",
        "```",
        *_commands(workdir),
        "```",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _settings(section: dict, prefix: str) -> str:
    return "\n".join(f"- `{prefix}.{key}`: `{value!r}`" for key, value in sorted(section.items()))


def _evaluation(eval_config: dict, last_eval: dict) -> str:
    if not last_eval:
        return "No held-out evaluation was logged."
    scores = ", ".join(f"{k} {last_eval[k]:.4f}" for k in _EVAL_KEYS if k in last_eval)
    return (
        f"At step {last_eval['step']}, on the held-out split with the masking every run of "
        f"mlm_jax is evaluated at ({eval_config['mask_ratio']} {eval_config['strategy']}, "
        f"{eval_config['mask_prob']}/{eval_config['random_prob']} replacement), so runs at "
        f"different training masking compare: {scores}."
    )


def _commands(workdir: str) -> list[str]:
    path = files.join(workdir, COMMANDS_FILE)
    if not files.exists(path):
        return ["(not recorded: the run started before mlm_jax kept its commands)"]
    return files.read_text(path).strip().splitlines()
