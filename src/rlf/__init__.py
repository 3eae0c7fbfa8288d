"""Recursive Latent Forcing: multi-step reasoning in the hidden state of a frozen language model."""

from rlf.errors import RLFError

__version__ = "0.1.0"
__all__ = ["RLFError", "__version__"]
