"""seqgen_jax: fast character-level LSTM sequence generators in JAX/Flax, measured against the truth."""

from ._devices import configure_host_devices

configure_host_devices()  # before anything starts JAX's CPU backend

__version__ = "0.1.0"
