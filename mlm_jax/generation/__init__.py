"""Text from an MLM by iterative unmasking (the command is mlm_jax/generate.py):

samplers  the loop over steps: MDLM's ancestral sampler and LLaDA's low-confidence remasking
text      the canvas ([CLS] prompt [MASK]... [SEP]), the tokens a model may write, `generate`
"""
