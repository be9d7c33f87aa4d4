"""Our train step against Hugging Face's PyTorch BERT and ModernBERT, at the same shapes, in one
process, alternating, with the spread over repeats.

    python experiments/peers.py               # every row: ~20 min on a quiet 2-core CPU
    python experiments/peers.py --shape=modernbert_tiny,bert_tiny --repeats=7
    python experiments/peers.py --quick       # smoke test, not timed

What each side computes per step (both float32, same batch of token ids, same masking rate):
- ours: the real jitted train step (mlm_jax.training.trainer: masking on device with the exact
  per-row budget, 80/10/10, forward, MLM head at the K prediction slots only, backward, AdamW
  with the config's schedule, donated state), as experiments/benchmark.py times it.
- peer: `BertForMaskedLM` / `ModernBertForMaskedLM` (transformers, PyTorch eager, sdpa
  attention, torch threads = the cores this process may use), built from our spec's
  config.json (mlm_jax.hf); masking in torch on the same tokens as DataCollatorForLanguageModeling
  masks (each maskable token with probability = the rate, then 80/10/10); forward with the head
  only at the masked positions (ModernBERT: its own `sparse_prediction=True`; BERT: `model.bert`,
  then `model.cls` on the masked positions' states, as NVIDIA's and MosaicML's BERT recipes do,
  since BertForMaskedLM has no such switch; --peer_bert_head=full for its plain forward);
  cross-entropy, backward, torch.optim.AdamW (fused where this torch has it), zero_grad.
  Dropout is each config's on both sides (BERT 0.1 / 0.1, ModernBERT none).

Timing: compile and --warmup steps per side (alternating) are left out; then --repeats rounds,
each timing --steps steps of one side and then of the other (the order flips every round, so a
drift in the machine's load falls on both). A row's ratio is the median over rounds of ours /
peer tokens/s in the same round; the spread is the range over rounds. Each side's MFU is its
median tokens/s times the model's FLOPs per token (mlm_jax.models.flops, the head at our K slots;
the peer's masked count averages the same) over the float32 matmul peak measured after the row:
the faster of JAX's and PyTorch's [4096, 4096] matmul, median of 5. It says how much room a row
has left on this CPU. The output is a markdown table to paste into docs/performance.md, headed by
the commit, the CPU and the versions, and one JSON line per row.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import jax
import numpy as np
from absl import app, flags

from experiments.timing import median_seconds
from mlm_jax import cli
from mlm_jax.config.files import load_config_file
from mlm_jax.models.flops import flops_per_token
from mlm_jax.training.synthetic import CLS, MASK, PAD, SEP, make_trainer, synthetic_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config file[:arg], overrides as --config.KEY=VALUE, the row's label)
SHAPES = {
    "modernbert_tiny": (
        "configs/modernbert.py:tiny",
        {},
        "ModernBERT tiny (4 x 128, window 64, V 8192), 32 x 128, 30 %",
    ),
    "modernbert_base_128": (
        "configs/modernbert.py:base",
        {"model.dtype": "float32", "train.batch_size": 8, "data.seq_len": 128},
        "ModernBERT base (22 x 768, window 128, V 32768), 8 x 128, 30 %",
    ),
    "modernbert_base_1024": (
        "configs/modernbert.py:base",
        {"model.dtype": "float32", "train.batch_size": 1, "data.seq_len": 1024},
        "ModernBERT base (22 x 768, window 128, V 32768), 1 x 1024, 30 %",
    ),
    "bert_base": (
        "configs/bert.py:base",
        {"model.dtype": "float32", "train.batch_size": 8},
        "BERT-base (12 x 768, V 30522), 8 x 128, 15 %",
    ),
    "bert_tiny": (
        "configs/tiny.py",
        {"model.num_layers": 2, "data.vocab_size": 30522},
        "BERT tiny (2 x 128, V 30522), 32 x 128, 15 %",
    ),
}
# --quick: every chosen row shrunk to this, one round of one step, no timing claimed.
QUICK = {
    "model.num_layers": 3,  # ModernBERT: one global layer, two local
    "model.local_window": 16,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.intermediate_size": 64,
    "data.vocab_size": 300,
    "data.seq_len": 32,
    "train.batch_size": 4,
}

_SHAPE = flags.DEFINE_list("shape", list(SHAPES), f"Rows to run, of: {', '.join(SHAPES)}.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps timed per side per round.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds (each: our steps, then the peer's).")
# Alone, our ModernBERT tiny step ran its first 5 steps at 9.6k tokens/s and every later 5 at
# 12.7-14.0k (the process's heap settling), so a single warm-up step timed a start-up cost.
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps per side before the rounds.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: tiny shapes, 1 round of 1 step.")
_PEER_BERT_HEAD = flags.DEFINE_enum(
    "peer_bert_head", "sparse", ["sparse", "full"], "HF BERT's head: masked positions or all."
)


def row_config(name: str, quick: bool):
    path, overrides, _ = SHAPES[name]
    file, _, arg = path.partition(":")
    config = load_config_file(os.path.join(ROOT, file), *([arg] if arg else []))
    config.train.warmup_steps = 0
    for key, value in {**overrides, **(QUICK if quick else {})}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


class OurStep:
    """The project's compiled train step on a synthetic batch; call() runs one and waits."""

    def __init__(self, config):
        self.trainer = make_trainer(config)
        run = self.trainer.run
        self.spec, self.ratio = run.model, float(run.masking.ratio)
        self.host_batch = synthetic_batch(
            int(config.train.batch_size), int(config.data.seq_len), run.model.vocab_size
        )
        with self.trainer.activate():
            self.batch = self.trainer.global_batch(self.host_batch)
            self.state = self.trainer.new_state()
            tables = self.trainer.tables
            self.step = self.trainer.jitted("train").lower(self.state, self.batch, tables).compile()
        leaves = jax.tree.leaves(self.state.params)
        self.parameters = sum(int(np.prod(x.shape)) for x in leaves)

    def __call__(self) -> float:
        self.state, metrics = self.step(self.state, self.batch, self.trainer.tables)
        return float(metrics["loss"])


def hf_config(spec):
    """transformers config of the same architecture, sdpa attention."""
    from transformers import BertConfig, ModernBertConfig

    from mlm_jax.hf import bert as hf_bert
    from mlm_jax.hf import modernbert as hf_modernbert

    if spec.arch == "modernbert":
        tokenizer = types.SimpleNamespace(pad_id=PAD, cls_id=CLS, sep_id=SEP)  # its special ids
        config = ModernBertConfig(**hf_modernbert.hf_config_dict(spec, tokenizer))
        config.sparse_prediction = True
    else:
        config = BertConfig(**hf_bert.hf_config_dict(spec))
    config._attn_implementation = "sdpa"
    return config


def torch_mask(tokens, maskable, ratio: float, vocab_size: int, generator):
    """DataCollatorForLanguageModeling's rule: Bernoulli(ratio) per maskable token, of which
    80 % become [MASK], 10 % a random id, 10 % stay; labels -100 elsewhere."""
    import torch

    chosen = torch.bernoulli(torch.where(maskable, ratio, 0.0), generator=generator).bool()
    labels = torch.where(chosen, tokens, -100)
    draw = torch.rand(tokens.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), MASK, tokens)
    random_ids = torch.randint(MASK + 1, vocab_size, tokens.shape, generator=generator)
    inputs = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, labels


class PeerStep:
    """HF's PyTorch model of the same shape on the same tokens; call() runs one train step."""

    def __init__(self, ours: OurStep, bert_head: str):
        import torch
        from transformers import BertForMaskedLM, ModernBertForMaskedLM

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        config = hf_config(ours.spec)
        modern = ours.spec.arch == "modernbert"
        self.model = (ModernBertForMaskedLM if modern else BertForMaskedLM)(config).train()
        self.sparse_bert = not modern and bert_head == "sparse"
        self.ratio, self.vocab = ours.ratio, config.vocab_size
        self.tokens = torch.from_numpy(ours.host_batch["tokens"]).long()
        self.maskable = torch.from_numpy(ours.host_batch["maskable"])
        self.generator = torch.Generator().manual_seed(0)
        try:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
            self.fused = True
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, foreach=True)
            self.fused = False
        self.parameters = sum(p.numel() for p in self.model.parameters())

    def loss(self, inputs, labels):
        import torch

        if not self.sparse_bert:
            return self.model(input_ids=inputs, labels=labels).loss
        states = self.model.bert(input_ids=inputs).last_hidden_state
        chosen = labels != -100
        logits = self.model.cls(states[chosen])
        return torch.nn.functional.cross_entropy(logits, labels[chosen])

    def __call__(self) -> float:
        inputs, labels = torch_mask(
            self.tokens, self.maskable, self.ratio, self.vocab, self.generator
        )
        loss = self.loss(inputs, labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()


def matmul_peak(size: int = 4096, runs: int = 5) -> float:
    """FLOP/s of one float32 [size, size] matmul: the faster of JAX's and PyTorch's medians."""
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    ja, jb = jax.device_put(a), jax.device_put(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    matmul = jax.jit(lambda x, y: x @ y)
    sides = (lambda: matmul(ja, jb), lambda: ta @ tb)
    return 2.0 * size**3 / min(median_seconds(run, runs) for run in sides)


def tokens_per_s(step, steps: int, tokens: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * tokens / (time.perf_counter() - start)


def run_row(
    name: str, steps: int, repeats: int, bert_head: str, quick: bool = False, warmup: int = 1
) -> dict:
    config = row_config(name, quick)
    ours = OurStep(config)
    peer = PeerStep(ours, bert_head)
    losses = (ours(), peer())  # the first step's losses; warm-up, untimed
    for _ in range(warmup - 1):
        ours(), peer()
    modern = ours.spec.arch == "modernbert"
    tokens = int(config.train.batch_size) * int(config.data.seq_len)
    rounds = []
    for r in range(repeats):
        sides = (ours, peer) if r % 2 == 0 else (peer, ours)
        rate = {id(s): tokens_per_s(s, steps, tokens) for s in sides}
        rounds.append((rate[id(ours)], rate[id(peer)]))
    ours_rates, peer_rates = zip(*rounds)
    ratios = [a / b for a, b in rounds]
    k = ours.trainer.run.masking.max_predictions
    flops = flops_per_token(ours.spec, int(config.data.seq_len), k)["total"]
    peak = 0.0 if quick else matmul_peak()
    return {
        "shape": name,
        "label": ("quick, shrunk: " if quick else "") + SHAPES[name][2],
        "peer": type(peer.model).__name__,
        "peer_head": "all positions" if bert_head == "full" and not modern else "masked positions",
        "peer_adamw": "fused" if peer.fused else "foreach",
        # ours pads the vocabulary rows (model.pad_vocab_multiple): (Vp - V) x (E + 1) more
        "parameters": {"ours": ours.parameters, "peer": peer.parameters},
        "first_loss": {"ours": losses[0], "peer": losses[1]},
        "warmup": warmup,
        "steps": steps,
        "repeats": repeats,
        "ours_tokens_per_s": [round(x, 1) for x in ours_rates],
        "peer_tokens_per_s": [round(x, 1) for x in peer_rates],
        "model_flops_per_token": flops,
        "matmul_peak_flops": peak,
        "mfu": {
            side: statistics.median(rates) * flops / peak if peak else None
            for side, rates in (("ours", ours_rates), ("peer", peer_rates))
        },
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def _git(*args) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor() or "?"


def environment() -> dict:
    import flax
    import torch
    import transformers

    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "--short", "HEAD")
        + (" (uncommitted changes)" if dirty else ""),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": flax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def _spread(values) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def markdown(env: dict, rows: list[dict], argv: list[str]) -> str:
    v = env["versions"]
    lines = [
        f"Commit `{env['commit']}`, {env['cpu']}, {env['cores']} cores, load average at the "
        f"start {env['load_average'][0]:.1f}; JAX {v['jax']}, flax {v['flax']}, PyTorch "
        f"{v['torch']}, transformers {v['transformers']}, Python {v['python']}. Command: "
        f"`{' '.join(['python experiments/peers.py', *argv])}`.",
        "",
        "| shape | peer | ours tokens/s | peer tokens/s | ours / peer | MFU ours / peer |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"**{r['ratio_median']:.2f}x** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        mfu = r["mfu"]
        mfu = f"{mfu['ours']:.0%} / {mfu['peer']:.0%}" if mfu["ours"] is not None else "-"
        lines.append(
            f"| {r['label']} | `{r['peer']}` ({r['peer_head']}) | "
            f"{_spread(r['ours_tokens_per_s'])} | {_spread(r['peer_tokens_per_s'])} | {ratio} "
            f"| {mfu} |"
        )
    lines.append("")
    lines.append(
        f"Tokens/s: median (range) over {rows[0]['repeats']} alternating rounds of "
        f"{rows[0]['steps']} steps per side, after {rows[0]['warmup']} untimed steps per side; "
        "the ratio is the median (range) of the rounds' ratios. MFU: median tokens/s x model "
        "FLOPs per token / the float32 matmul peak measured after the row "
        f"({rows[0]['matmul_peak_flops'] / 1e12:.3f} TFLOP/s after the first)."
    )
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    unknown = [s for s in _SHAPE.value if s not in SHAPES]
    if unknown:
        cli.fail(f"--shape={','.join(unknown)}: expected some of {', '.join(SHAPES)}")
    steps, repeats, warmup = (
        (1, 1, 1) if _QUICK.value else (_STEPS.value, _REPEATS.value, _WARMUP.value)
    )
    if warmup < 1:
        cli.fail(f"--warmup={warmup}: expected at least 1 (the first step's losses are reported)")
    env = environment()
    rows = []
    for name in _SHAPE.value:
        row = run_row(name, steps, repeats, _PEER_BERT_HEAD.value, _QUICK.value, warmup)
        print(json.dumps({**row, **env}), flush=True)
        rows.append(row)
    if _QUICK.value:
        print("--quick: tiny shapes, one step per side; these tokens/s are not measurements.")
    print(markdown(env, rows, sys.argv[1:]))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))
