"""Downstream fine-tuning: sentence (pair) classification from a pretrained run, or from scratch.

    python -m mlm_jax.finetune --pretrained=RUN_DIR --task=tsv:train.tsv,dev.tsv --workdir=OUT
    python -m mlm_jax.finetune --pretrained=RUN_DIR --init=random --task=... --workdir=OUT2
    python -m mlm_jax.finetune --pretrained=HF_BERT_DIR --task=tfds:glue/sst2 --workdir=OUT

MLM losses at different masking ratios do not compare on their own; accuracy on a downstream
task does. The encoder comes from the run's latest checkpoint or a Hugging Face directory; the
classifier starts fresh (mlm_jax/finetuning/model.py). `--init=random` keeps the run's
architecture and tokenizer but not its weights: the baseline that tells what pretraining bought.

Tasks:
  tsv:TRAIN,DEV       lines `label<TAB>text[<TAB>text2]` (no header); labels are any strings.
  tfds:glue/NAME      GLUE through tfds.data_source (sst2, cola, mrpc, qqp, mnli, qnli, rte, wnli);
                      prepare once with `tfds build glue/NAME --file_format=array_record`.
  python_docs:KIND    the built-in corpus's `order` or `same_doc` task, dev text from the run's
                      held-out documents (--pretrained must be a run on python_docs).
Pairs are encoded `[CLS] a [SEP] b [SEP]` with token types 0 then 1, the longer text cut first.

Writes OUT/metrics.jsonl (one line per epoch: train loss, dev loss, accuracy, Matthews
correlation and, on two classes, F1 of class 1) and OUT/result.json (the last epoch's scores and
the majority-class accuracy on dev). OUT must be new, empty or an earlier fine-tuning's.

The work is done by the package mlm_jax.finetuning (tasks, encoding, model, metrics, outputs,
loop); this module is its command line.
"""

from __future__ import annotations

from mlm_jax import cli, logs
from mlm_jax.finetuning.encoding import encode
from mlm_jax.finetuning.loop import finetune, optimizer_spec
from mlm_jax.finetuning.model import init_params, load_encoder
from mlm_jax.finetuning.outputs import RESULT_FILE
from mlm_jax.finetuning.tasks import GLUE, Split, Task, load_task

__all__ = ["GLUE", "RESULT_FILE", "Split", "Task", "encode", "finetune", "init_params",
           "load_encoder", "load_task", "main", "optimizer_spec"]  # fmt: skip
_init_params = init_params  # (its name before the package split)


def main(argv=None) -> None:
    from absl import app, flags

    flags.DEFINE_string("pretrained", "", "Run dir (checkpoints/) or HF BERT dir; '' = none.")
    flags.DEFINE_enum("init", "pretrained", ["pretrained", "random"], "random = baseline.")
    flags.DEFINE_string("task", None, "tsv:TRAIN,DEV, tfds:glue/<name> or python_docs:<kind>.")
    flags.DEFINE_string("workdir", None, "Output directory (metrics.jsonl, result.json).")
    flags.DEFINE_integer("epochs", 3, "Passes over the training set.")
    flags.DEFINE_integer("batch_size", 32, "Examples per step.")
    flags.DEFINE_float("learning_rate", 1e-4, "Peak Adam learning rate.")
    flags.DEFINE_float("warmup_fraction", 0.1, "Fraction of steps of linear warmup.")
    flags.DEFINE_integer("max_len", 0, "Tokens per example; 0 = the run's data.seq_len.")
    flags.DEFINE_integer("seed", 0, "Classifier init, dropout and data order.")
    flags.DEFINE_string("tokenizer", "", "Tokenizer path overriding the pretrained one.")
    flags.DEFINE_string("data_dir", "", "TFDS data dir for tfds: tasks.")
    flags.DEFINE_enum("pooling", "cls", ["cls", "mean"], "ModernBERT pooling: [CLS] or mean.")
    FLAGS = flags.FLAGS

    def run(argv):
        del argv
        logs.configure()
        for name in ("task", "workdir"):  # one line, not absl's traceback for a required flag
            if not FLAGS[name].value:
                cli.fail(f"--{name} is required: {FLAGS[name].help}")
        with cli.one_line_errors():
            result = finetune(
                FLAGS.pretrained,
                FLAGS.task,
                FLAGS.workdir,
                init=FLAGS.init,
                epochs=FLAGS.epochs,
                batch_size=FLAGS.batch_size,
                learning_rate=FLAGS.learning_rate,
                warmup_fraction=FLAGS.warmup_fraction,
                max_len=FLAGS.max_len,
                seed=FLAGS.seed,
                tokenizer=FLAGS.tokenizer,
                data_dir=FLAGS.data_dir,
                pooling=FLAGS.pooling,
            )
        print(_summary(result))

    app.run(run, argv, flags_parser=cli.absl_flags_parser(__doc__, __name__))


def _summary(result: dict) -> str:
    """dev accuracy 0.8125 (majority class 0.5000), f1 0.8000, mcc 0.6325"""
    line = (
        f"dev accuracy {result['dev/accuracy']:.4f} "
        f"(majority class {result['dev/majority_accuracy']:.4f})"
    )
    for name in ("f1", "mcc"):
        if f"dev/{name}" in result:
            line += f", {name} {result[f'dev/{name}']:.4f}"
    return line


if __name__ == "__main__":
    main()
