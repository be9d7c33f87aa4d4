"""whole_word: a WordPiece word (its start piece and the ## pieces after it) is one unit.

Words are taken whole in a random order until the row's real target ratio * n is met in
expectation (the crossing draw of masking/core.py), so a word is never split.
"""

from mlm_jax.masking.strategy import Strategy

STRATEGY = Strategy(name="whole_word", doc="whole words", starts_field="word_starts")
