"""Every config field with its default and meaning; experiment files in configs/ override a few.

Keeping the defaults in one place means a new field is added once and every experiment file
(configs/tiny.py, configs/bert.py, ...) stays a short list of what it changes. Beside a key's
default stands whether it may change without making another run (config/keys.py):
`may_change(value, ON_RESUME)` when a workdir resumes, BETWEEN_PHASES for the model keys a phase
may change from the run it starts from (model.init_from), COMPUTE_ONLY for both.
"""

import functools

import ml_collections

from mlm_jax.config import keys
from mlm_jax.config.keys import BETWEEN_PHASES, COMPUTE_ONLY, ON_RESUME, may_change


def base_config() -> ml_collections.ConfigDict:
    """Every field at its default (an experiment file changes a few)."""
    return keys.unwrap(_tagged_config())[0]


def can_change(key: str, when: str) -> bool:
    """Whether the dotted `key` may change `when` (keys.ON_RESUME or keys.BETWEEN_PHASES)."""
    return when in _changeable().get(key, ())


@functools.cache
def _changeable() -> dict[str, frozenset[str]]:
    return keys.unwrap(_tagged_config())[1]


def _tagged_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of every random key in the run (init, masking, dropout, data order)
    c.data = _data()
    c.masking = _masking()
    c.model = _model()
    c.train = _train()
    c.log = _log()
    c.eval = _eval()
    c.checkpoint = _checkpoint()
    c.mesh = _mesh()
    return c


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # python_docs | text:<glob> | parquet:<glob> | tfds:<name>[:<feature>] | rows:<dir>
    d.dataset = "python_docs"
    # where TFDS datasets are built/read; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    d.data_dir = may_change("", ON_RESUME)
    d.tokenizer = ""  # vocab.txt or tokenizer.json; "" = train a WordPiece vocab on the train split
    d.vocab_size = 8192  # size of the trained WordPiece vocabulary (ignored with data.tokenizer)
    d.lowercase = True  # lowercase and strip accents when training a tokenizer
    d.seq_len = 128  # tokens per packed row, [CLS] and [SEP] included
    d.packing = "concat"  # concat: documents joined and cut into rows | pad: one document per row
    d.text_unit = "paragraph"  # text: and parquet: documents: paragraph | line | file (record)
    d.text_field = (
        "text"  # the text of a text: .jsonl record (its field) or a parquet: row (column)
    )
    # python_docs, text:, parquet: and tfds sets without a held-out split: fraction of documents
    # held out for eval (a hash of each document's text decides; the tokenizer CLI's default too)
    d.heldout_fraction = 0.05
    d.prefetch = may_change(2, ON_RESUME)  # batches prepared ahead on background threads
    d.num_workers = may_change(0, ON_RESUME)  # grain worker processes (0 = in-process)
    return d


def _masking() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.ratio = 0.15  # fraction of maskable tokens selected per row (start ratio of a schedule)
    m.strategy = "uniform"  # uniform | whole_word | span | pmi (n-grams of masking.pmi_vocab)
    m.mask_prob = 0.8  # of the selected tokens: fraction replaced by [MASK]
    m.random_prob = 0.1  # of the selected tokens: fraction replaced by a random ordinary token
    m.max_predictions = (
        0  # K, predictions per row; 0 = from the largest scheduled ratio and seq_len
    )
    m.schedule = "constant"  # constant | linear | cosine (ratio -> end_ratio) | piecewise
    m.end_ratio = 0.15  # linear/cosine: ratio at step train.num_steps, where LR decay ends too
    m.piecewise = ""  # piecewise: "STEP:RATIO ..." (e.g. "800:0.15"): that ratio from STEP on
    # At least this many predictions in a row with eligible tokens (capped by them), as BERT's
    # max(1, round(ratio * n)): 1, so a short row (packing=pad) still trains; 0 = pure ratio.
    m.min_predictions = 1
    # Corruption rate (Wettig et al. 2023), beside masking.ratio = the prediction rate. 0 = the
    # same. Above: the extra corrupted tokens become [MASK] and carry no loss; below: the extra
    # predicted tokens are seen unchanged. mask_prob/random_prob split predicted-and-corrupted.
    m.corruption_ratio = 0.0
    m.pmi_vocab = ""  # strategy=pmi: DIR from `python -m mlm_jax.data.pmi --out=DIR`
    m.span_p = 0.2  # span strategy: geometric parameter of the span length (in words)
    m.span_max = 10  # span strategy: longest span, in words
    m.span_sampling = "tile"  # span: tile (spans tile the row) | anchored (SpanBERT's anchors)
    m.span_replacement = "token"  # token: 80/10/10 drawn per token | span: one draw per span/word
    m.static_epochs = (
        0  # 0 = dynamic (fresh mask each step); N = an example keeps its mask N epochs
    )
    m.never_mask_ids = ()  # token ids never selected, besides [CLS] [SEP] [PAD] and other specials
    # Per-row rate (masked diffusion, MDLM/LLaDA): fixed = masking.ratio and its schedule;
    # uniform:A,B or beta:A,B = each row draws its own rate (ratio unused; K from the top end)
    m.rate_distribution = "fixed"
    # mean: mean cross-entropy over predictions | elbo: each row weighted by 1/its rate, per
    # eligible token (MDLM's bound; needs mask_prob=1, random_prob=0, corruption_ratio=0)
    m.loss_weighting = "mean"
    # none | frequency:ALPHA (strategy=uniform): a token's chance to be selected is proportional
    # to count^-ALPHA, counts from the training split (rare tokens more often); 0 = uniform
    m.token_weighting = "none"
    return m


def _model() -> ml_collections.ConfigDict:
    mo = ml_collections.ConfigDict()
    mo.num_layers = 4  # Transformer blocks
    mo.hidden_size = 256  # width of the residual stream
    mo.num_heads = 4  # attention heads (hidden_size must divide by it)
    mo.intermediate_size = 1024  # width of the MLP inside each block
    mo.vocab_size = 0  # 0 = take it from the tokenizer
    # longest sequence the position table holds
    mo.max_position_embeddings = may_change(512, BETWEEN_PHASES)
    mo.type_vocab_size = 2  # token type (segment A/B) embeddings, as in BERT
    # dropout on embeddings, attention output and MLP output
    mo.dropout_rate = may_change(0.1, BETWEEN_PHASES)
    # dropout on attention probabilities
    mo.attention_dropout_rate = may_change(0.1, BETWEEN_PHASES)
    mo.layer_norm_eps = 1e-12  # LayerNorm epsilon (BERT: 1e-12)
    # stddev of the truncated-normal weight init
    mo.initializer_range = may_change(0.02, BETWEEN_PHASES)
    mo.pre_ln = False  # True = pre-LN blocks (not exportable to Hugging Face BERT)
    # compute dtype: float32 | bfloat16 (parameters stay float32)
    mo.dtype = may_change("float32", BETWEEN_PHASES)
    # jax.nn.dot_product_attention implementation: xla | cudnn
    mo.attention = may_change("xla", COMPUTE_ONLY)
    mo.gelu = "exact"  # activation: exact (erf, BERT's) | tanh (approximation, HF's gelu_new)
    # per-layer rematerialisation: none | full | dots (save matmul outputs)
    mo.remat = may_change("none", COMPUTE_ONLY)
    mo.scan_layers = True  # stack layers with nn.scan (compile time flat in depth)
    # q, k, v from one [E, 3E] matmul (False: three matmuls, same weights)
    mo.fused_qkv = may_change(True, COMPUTE_ONLY)
    mo.pad_vocab_multiple = 128  # embedding rows padded to this multiple; padding never predicted
    # False = packed documents do not attend to each other
    mo.attend_across_documents = may_change(False, BETWEEN_PHASES)
    mo.arch = "bert"  # bert (BERT, post- or pre-LN) | modernbert (ModernBERT blocks below)
    mo.global_rope_theta = 160_000.0  # modernbert: RoPE base of the global layers
    mo.local_rope_theta = 10_000.0  # modernbert: RoPE base of the sliding-window layers
    mo.local_window = 128  # modernbert: sliding window, in tokens (a token sees +-window/2)
    mo.global_every = 3  # modernbert: layers 0, n, 2n, ... attend globally (1 = all global)
    mo.glu_activation = "gelu"  # modernbert gated MLP: gelu (GeGLU, model.gelu's) | silu
    mo.norm = "layernorm"  # modernbert norms: layernorm (bias-free) | rmsnorm
    # HF BERT/ModernBERT dir or a run dir of this project ("" = random init)
    mo.init_from = may_change("", ON_RESUME)
    return mo


def _train() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.num_steps = may_change(3000, ON_RESUME)  # optimizer steps
    t.batch_size = 32  # global batch, in sequences
    t.learning_rate = 1e-3  # peak learning rate
    t.warmup_steps = 200  # linear warmup from 0 to the peak
    # decay after warmup: linear | cosine | constant (to 0 at the end) | wsd (warmup-stable-decay)
    t.lr_schedule = "linear"
    t.decay_share = 0.1  # wsd: share of train.num_steps spent decaying to 0, at the end
    t.decay_shape = "sqrt"  # wsd decay: linear | cosine | sqrt (1 - sqrt(t), ModernBERT's)
    t.weight_decay = 0.01  # AdamW decoupled weight decay (not on LayerNorm or biases)
    t.b1 = 0.9  # Adam beta1
    t.b2 = 0.98  # Adam beta2
    t.eps = 1e-6  # Adam epsilon
    t.grad_clip = 1.0  # global gradient norm clip (0 = off)
    t.microbatches = 1  # gradient accumulation: batch_size is split into this many microbatches
    # on a NaN/Inf loss or gradient: stop | skip (skip the update, count it)
    t.nan_policy = may_change("stop", ON_RESUME)
    return t


def _log() -> ml_collections.ConfigDict:
    lg = ml_collections.ConfigDict()
    # train metrics pulled to the host and written this often
    lg.every_steps = may_change(50, ON_RESUME)
    # Weights & Biases project that also gets the scalars, the resolved config and a sweep's
    # axes ('' = none; needs the [wandb] extra; WANDB_MODE=offline writes WORKDIR/wandb/ only)
    lg.wandb_project = may_change("", ON_RESUME)
    return lg


def _eval() -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    # evaluate before step 1, then this often and at the end
    e.every_steps = may_change(500, ON_RESUME)
    e.mask_ratio = 0.15  # eval masking ratio, the same for every run so runs compare
    # held-out batches per evaluation (fixed, the same every time)
    e.num_batches = may_change(8, ON_RESUME)
    e.strategy = "uniform"  # eval masking strategy, common to all runs
    e.mask_prob = 0.8  # eval replacement split: [MASK] fraction
    e.random_prob = 0.1  # eval replacement split: random-token fraction
    e.batch_size = 32  # global eval batch, in sequences
    # eval/nll_bound (nats per token, the masked-diffusion bound): stratified masking rates per
    # held-out row, each a forward pass over the eval batches (fixed keys: 0 = no bound)
    e.nll_bound_rates = may_change(4, ON_RESUME)
    return e


def _checkpoint() -> ml_collections.ConfigDict:
    ck = ml_collections.ConfigDict()
    ck.every_steps = may_change(500, ON_RESUME)  # save this often (and at the end, and on SIGTERM)
    ck.keep = may_change(2, ON_RESUME)  # checkpoints kept on disk
    return ck


def _mesh() -> ml_collections.ConfigDict:
    me = ml_collections.ConfigDict()
    me.data = may_change(-1, ON_RESUME)  # data-parallel axis size (-1 = all devices left over)
    me.fsdp = may_change(1, ON_RESUME)  # parameter/optimizer sharding axis (ZeRO-3 style)
    me.tensor = may_change(1, ON_RESUME)  # tensor-parallel axis (Megatron style)
    # logical axis name -> mesh axes; the model names only logical axes
    me.logical_axis_rules = may_change(
        (
            ("batch", ("data", "fsdp")),
            ("length", None),
            ("embed", "fsdp"),
            ("heads", "tensor"),
            ("kv", None),
            ("mlp", "tensor"),
            ("vocab", "tensor"),
            ("layers", None),
        ),
        ON_RESUME,
    )
    return me
