"""seqgen_jax: fast character-level LSTM sequence generators in JAX/Flax, measured against the truth."""

__version__ = "0.1.0"
