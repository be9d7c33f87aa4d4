"""Input pipeline: corpora, tokenizer, packing and the per-host loader."""
