"""hf-soups: model soups as a first-class part of the Hugging Face workflow.

Pipeline: :class:`Candidate` (pin to a commit, read headers) -> :func:`verify_lineage` (one base revision) ->
:class:`Evaluator` (held-out scores) -> methods (uniform, weighted, interpolate, greedy, learned) on the streaming
mixer (:func:`mix`) -> :class:`Soup` (save, card, push). :class:`SoupBuilder` runs it all;
:class:`SoupCallback` runs it from a ``transformers.Trainer``.

Example:
    >>> from hf_soups import SoupBuilder
    >>> soup = SoupBuilder(candidates=["org/run-a", "org/run-b@3f1c9e2"], method="uniform").build()  # doctest: +SKIP
    >>> soup.push_to_hub("org/my-soup")                                                              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

# Public names, imported on first use: `import hf_soups` stays cheap (no torch/transformers import) and the CLI
# starts fast.
_LAZY = {
    "SoupBuilder": "builder",
    "Soup": "soup",
    "IngredientReport": "soup",
    "SoupCallback": "callback",
    "Candidate": "candidates",
    "parse_reference": "candidates",
    "verify_lineage": "lineage",
    "LineageReport": "lineage",
    "Problem": "lineage",
    "SoupConfig": "recipe",
    "EvaluationConfig": "recipe",
    "GreedyConfig": "recipe",
    "LearnedConfig": "recipe",
    "OutputConfig": "recipe",
    "Evaluator": "evaluation",
    "EvalSettings": "evaluation",
    "EvalResult": "evaluation",
    "mix": "mixing",
    "interpolate": "mixing",
    "tensor_hash": "mixing",
    "RunningSum": "mixing",
    "Hub": "hub",
    "register_method": "methods",
    "get_method": "methods",
}

__all__ = list(_errors_all) + list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_soups' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .builder import SoupBuilder
    from .callback import SoupCallback
    from .candidates import Candidate, parse_reference
    from .evaluation import EvalResult, EvalSettings, Evaluator
    from .hub import Hub
    from .lineage import LineageReport, Problem, verify_lineage
    from .methods import get_method, register_method
    from .mixing import RunningSum, interpolate, mix, tensor_hash
    from .recipe import EvaluationConfig, GreedyConfig, LearnedConfig, OutputConfig, SoupConfig
    from .soup import IngredientReport, Soup
