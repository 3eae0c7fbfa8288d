"""Shared fixtures: tiny bases are loaded once per session (they are deterministic and frozen)."""

import pytest
import torch

from rlf.base import load_base


@pytest.fixture(scope="session")
def tiny_llama():
    return load_base("tiny-llama")


@pytest.fixture(scope="session")
def embedded_base():
    """The embedded SmolLM2-135M, first 6 layers (the default preset's encoder)."""
    return load_base("smollm2-135m", encoder_layers=6)


@pytest.fixture
def one_thread():
    """One torch thread for the test (small ops; several test processes may share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("encodings"))
