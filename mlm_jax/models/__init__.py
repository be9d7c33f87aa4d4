"""Encoder families (BERT, ModernBERT), their spec, the layers they share, the registry that
picks one by `model.arch`, and the FLOPs model."""
