"""Test helpers: a local Hub-compatible server and tiny models.

- :class:`LocalHub`: a Hugging Face Hub-compatible HTTP server on 127.0.0.1 that the real `huggingface_hub`
  client talks to unchanged (see `hf_soups.testing.server`), with a request log and fault injection.
- `hf_soups.testing.factories`: tiny random models written as real `transformers` folders.
- `hf_soups.testing.pytest_plugin`: pytest fixtures (``local_hub``, ``session_local_hub``, ``shared_local_hub``).
"""

from typing import Any

from ._handler import RequestRecord
from .faults import FaultRule, Faults
from .server import LocalHub

__all__ = ["FaultRule", "Faults", "LocalHub", "RequestRecord", "factories"]


def __getattr__(name: str) -> Any:
    # `factories` imports torch and transformers: load it on first use, so that the server alone
    # (`python -m hf_soups.testing`) starts in a fraction of a second.
    if name == "factories":
        import importlib

        return importlib.import_module(f"{__name__}.factories")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
