"""Shared fixtures: tiny bases are loaded once per session (they are deterministic and frozen)."""

import pytest

from rlf.base import load_base


@pytest.fixture(scope="session")
def tiny_llama():
    return load_base("tiny-llama")


@pytest.fixture(scope="session")
def embedded_base():
    """The embedded SmolLM2-135M, first 6 layers (the default preset's encoder)."""
    return load_base("smollm2-135m", encoder_layers=6)
