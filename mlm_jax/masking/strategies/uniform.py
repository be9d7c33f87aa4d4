"""uniform: every eligible token is a unit of its own, BERT's rule with an exact budget.

Each row selects exactly max(round(ratio * n), floor) of its n eligible tokens, in a random
order drawn from the row's key.
"""

from mlm_jax.masking.strategy import Strategy

STRATEGY = Strategy(name="uniform", doc="tokens, exact budget")
