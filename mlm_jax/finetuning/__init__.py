"""Downstream fine-tuning, by job (the command is mlm_jax/finetune.py):

tasks       a task spec (tsv:, tfds:glue/, python_docs:) -> train and dev texts with labels
python_docs the built-in corpus's tasks (order, same_doc), dev text from held-out documents
encoding    texts -> [CLS] a [SEP] (b [SEP]) token rows
model       the encoder to start from and the classifier's parameters
metrics     accuracy, F1 (binary tasks) and Matthews correlation, as GLUE reports them
outputs     the output directory: never over files this project did not write
loop        the optimizer, the training loop and `finetune`, which ties them together
"""
