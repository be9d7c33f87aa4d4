"""Input pipeline: sources (data.dataset's kinds), tokenizer, packing, the row store and the
per-host loader."""
