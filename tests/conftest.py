"""Shared fixtures for the test suite."""

import pytest

from helpers import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random 2-layer llama with a byte-level tokenizer, saved as an mlx-lm model directory."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")
