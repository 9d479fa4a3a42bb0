"""seqgen_jax: fast character-level LSTM sequence generators in JAX/Flax, measured against the truth.

The Python API (`load`, `config`, `train`; see api.py) imports JAX only when called, so `import
seqgen_jax` stays cheap and `seqgen data` never starts it."""

from ._devices import configure_host_devices

configure_host_devices()  # before anything starts JAX's CPU backend

from .api import Run, config, load, sweep, train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Run", "config", "load", "sweep", "train"]
