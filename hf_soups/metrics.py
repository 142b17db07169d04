"""Metrics: loading `evaluate` modules, combining them, and the rules of exact early rejection.

A metric can be named by an `evaluate` id (``"accuracy"``: the Hub space ``evaluate-metric/accuracy``, or the
module cache when offline), by a path to a module (a folder holding ``<name>.py``, or the ``.py`` file), given as
an already loaded ``evaluate.EvaluationModule``, or as a list of these (combined with ``evaluate.combine``).
A Trainer-style ``compute_metrics(EvalPrediction) -> dict`` can be added on top. Every module is loaded through
``evaluate.load``; nothing here re-implements a metric.

Early rejection (see :func:`cannot_meet`) is allowed only for metrics registered with
:func:`register_bounded_mean`: metrics that are a weighted mean of per-unit values known to lie in
``[low, high]`` (accuracy: per-example 0/1 values, weight 1; causal-LM loss: per-token losses >= 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import EvaluationError
from .progress import get_logger

logger = get_logger(__name__)

MetricLike = Union[str, os.PathLike, Any, Sequence[Union[str, os.PathLike, Any]]]
"""An `evaluate` id, a path to a metric module, an `EvaluationModule`, or a list of them."""

ComputeMetrics = Callable[[Any], Mapping[str, Any]]
"""A Trainer-style ``compute_metrics(EvalPrediction) -> dict``."""

_BUNDLED = Path(__file__).parent / "testing" / "metrics"

# Metrics for which a lower value is better (Trainer's rule otherwise: names ending in "loss").
_LOWER_IS_BETTER = {"loss", "perplexity", "wer", "cer", "mse", "mae", "rmse", "ter"}


def local_metric_path(name: str) -> Path:
    """The folder of a metric module bundled with hf-soups (``accuracy``, ``f1``), for offline use.

    Args:
        name: the metric name.

    Returns:
        The folder, which ``evaluate.load`` accepts.

    Raises:
        EvaluationError: no such bundled module.

    Example:
        >>> evaluate.load(str(local_metric_path("accuracy")))  # doctest: +SKIP
    """
    folder = _BUNDLED / name
    if not (folder / f"{name}.py").is_file():
        available = sorted(p.name for p in _BUNDLED.iterdir() if (p / f"{p.name}.py").is_file())
        raise EvaluationError(f"no bundled metric module named {name!r}; bundled: {available}")
    return folder


def default_greater_is_better(metric_name: str) -> bool:
    """Whether a higher value of `metric_name` is better: False for losses, perplexity, error rates."""
    name = metric_name.lower()
    if name.startswith("eval_"):
        name = name[len("eval_") :]
    return not (name in _LOWER_IS_BETTER or name.endswith("loss"))


def _is_module(obj: Any) -> bool:
    import evaluate

    return isinstance(obj, (evaluate.EvaluationModule, evaluate.CombinedEvaluations))


def load_metric(spec: Union[str, os.PathLike, Any], **load_kwargs: Any) -> Any:
    """Load one metric through ``evaluate.load`` (or return it unchanged when it is already loaded).

    Args:
        spec: an `evaluate` id (``"accuracy"``, ``"org/my-metric"``), a path to a module folder or ``.py``
            file, or an ``evaluate.EvaluationModule``.
        **load_kwargs: passed to ``evaluate.load`` (``config_name``, ``keep_in_memory``, ...).

    Returns:
        The ``evaluate.EvaluationModule``.

    Raises:
        EvaluationError: the module cannot be found or fails to import; the message names it and says how to
            make it available offline.

    Example:
        >>> load_metric(local_metric_path("accuracy")).compute(predictions=[1, 0], references=[1, 1])
        {'accuracy': 0.5}
    """
    if _is_module(spec):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise EvaluationError(
            f"cannot use {spec!r} as a metric",
            hint="pass an evaluate id ('accuracy'), a path to a metric module, an evaluate.EvaluationModule, "
            "or a list of them; for a function use compute_metrics=",
        )
    import evaluate

    path = os.fspath(spec)
    load_kwargs.setdefault("keep_in_memory", True)  # no arrow files, no locks between processes
    try:
        return evaluate.load(path, **load_kwargs)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, ...
        name = Path(path).name.removesuffix(".py") or path
        bundled = _BUNDLED / name
        hints = [f"pass a local path to the module (a folder holding {name}.py)"]
        if (bundled / f"{name}.py").is_file():
            hints[0] += f", e.g. {bundled}"
        hints.append(f"or set HF_ENDPOINT to a Hub that serves evaluate-metric/{name} (hf_soups.testing.LocalHub)")
        hints.append("or load it once online so that it is in the evaluate module cache")
        raise EvaluationError(
            f"metric {path!r} could not be loaded: {type(err).__name__}: {err}", hint=", ".join(hints)
        ) from err


def metric_id(module: Any) -> str:
    """A stable identifier of a loaded module for cache keys: ``name`` or ``name:config``."""
    if hasattr(module, "evaluation_modules"):  # CombinedEvaluations
        return "+".join(metric_id(m) for m in module.evaluation_modules)
    name = getattr(module, "name", type(module).__name__)
    config = getattr(module, "config_name", "default")
    return name if config in (None, "default") else f"{name}:{config}"


def _to_python(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class MetricSuite:
    """The metrics an evaluator computes: `evaluate` modules (combined) and/or a ``compute_metrics`` callable.

    Args:
        metric: what to load (see :data:`MetricLike`), or None for no `evaluate` module.
        compute_metrics: a Trainer-style callable, called with an ``EvalPrediction`` holding the logits and
            label ids; its keys are added to (and override) those of the modules.

    Raises:
        EvaluationError: nothing to compute, or a module cannot be loaded.

    Example:
        >>> suite = MetricSuite([local_metric_path("accuracy"), local_metric_path("f1")])
        >>> suite.compute(predictions=[1, 0, 1], references=[1, 1, 1])
        {'accuracy': 0.6666666666666666, 'f1': 0.8}
    """

    def __init__(self, metric: Optional[MetricLike], compute_metrics: Optional[ComputeMetrics] = None):
        if metric is None and compute_metrics is None:
            raise EvaluationError("no metric to compute", hint="pass metric='accuracy' (or a path) or compute_metrics=")
        specs: List[Any] = []
        if metric is not None:
            many = isinstance(metric, (list, tuple))
            specs = list(metric) if many else [metric]
        self.modules: List[Any] = [load_metric(s) for s in specs]
        self.compute_metrics = compute_metrics
        self._combined: Any = None
        if len(self.modules) == 1:
            self._combined = self.modules[0]
        elif self.modules:
            import evaluate

            self._combined = evaluate.combine(self.modules)

    @property
    def ids(self) -> List[str]:
        """Identifiers of the modules (and callable) for cache keys."""
        out = [metric_id(m) for m in self.modules]
        if self.compute_metrics is not None:
            fn = self.compute_metrics
            out.append(f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}")
        return out

    @property
    def module_names(self) -> List[str]:
        """The names of the `evaluate` modules (``accuracy``, ``f1``), which are also their result keys."""
        return [getattr(m, "name", "") for m in self.modules]

    def compute(
        self,
        predictions: Any,
        references: Any,
        *,
        logits: Any = None,
        label_ids: Any = None,
    ) -> Dict[str, Any]:
        """Compute every metric.

        Args:
            predictions: predicted label ids, one per example (what the modules get).
            references: reference label ids.
            logits: the raw model outputs, for ``compute_metrics`` (defaults to `predictions`).
            label_ids: the labels for ``compute_metrics`` (defaults to `references`).

        Returns:
            One flat dict of plain Python values.

        Raises:
            EvaluationError: a metric failed (its message is kept).
        """
        out: Dict[str, Any] = {}
        if self._combined is not None:
            try:
                result = self._combined.compute(predictions=predictions, references=references)
            except Exception as err:
                raise EvaluationError(f"metric {'+'.join(self.ids)} failed: {type(err).__name__}: {err}") from err
            out.update({k: _to_python(v) for k, v in result.items()})
        if self.compute_metrics is not None:
            from transformers import EvalPrediction

            pred = EvalPrediction(
                predictions=logits if logits is not None else predictions,
                label_ids=label_ids if label_ids is not None else references,
            )
            result = self.compute_metrics(pred)
            if not isinstance(result, Mapping):
                raise EvaluationError(f"compute_metrics returned {type(result).__name__}, expected a dict")
            out.update({k: _to_python(v) for k, v in result.items()})
        return out


# ---------------------------------------------------------------------------------------------- early rejection


@dataclass(frozen=True)
class BoundedMean:
    """A metric equal to ``sum(values) / sum(weights)`` where each unit's value lies in ``[low, high]``.

    Attributes:
        name: the metric key (``accuracy``).
        low: the smallest value one unit can contribute (per unit of weight).
        high: the largest (``math.inf`` when unbounded).
    """

    name: str
    low: float
    high: float


_BOUNDED_MEANS: Dict[str, BoundedMean] = {}


def register_bounded_mean(name: str, low: float, high: float) -> None:
    """Declare that metric `name` is a weighted mean of per-unit values in ``[low, high]``.

    Only then may an evaluation of it stop early; the task adapter supplies the per-example values.

    Example:
        >>> register_bounded_mean("accuracy", 0.0, 1.0)
    """
    if not low <= high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    _BOUNDED_MEANS[name] = BoundedMean(name, float(low), float(high))


def get_bounded_mean(name: str) -> Optional[BoundedMean]:
    """The registration of `name`, or None when it does not qualify for early rejection."""
    return _BOUNDED_MEANS.get(name)


register_bounded_mean("accuracy", 0.0, 1.0)
register_bounded_mean("loss", 0.0, math.inf)


def meets(score: float, bar: float, *, strict: bool = False, greater_is_better: bool = True) -> bool:
    """The acceptance rule: does `score` reach `bar`?

    ``score >= bar`` (``>`` when strict) if greater is better, ``score <= bar`` (``<``) otherwise.
    """
    if greater_is_better:
        return score > bar if strict else score >= bar
    return score < bar if strict else score <= bar


def best_reachable(
    bounded: BoundedMean,
    value_sum: Fraction,
    weight_seen: Fraction,
    weight_total: Fraction,
    *,
    greater_is_better: bool,
) -> float:
    """The best final score still reachable after seeing part of the data, rounded like the final score.

    With ``S`` the exact sum of the values seen, ``W_seen`` their weight and ``W`` the total weight, the final
    score is ``(S + R) / W`` where the rest ``R`` lies in ``[low, high] * (W - W_seen)``. The best reachable score
    is ``(S + high * (W - W_seen)) / W`` when greater is better, ``(S + low * (W - W_seen)) / W`` otherwise,
    computed exactly (fractions) and rounded once to a float. The final score is the float nearest to the exact
    ``(S + R) / W``; since rounding is monotone, the final score can never be better than this bound.

    Returns:
        The bound (``inf``/``-inf`` when the unseen part is unbounded in the good direction).
    """
    rest = weight_total - weight_seen
    edge = bounded.high if greater_is_better else bounded.low
    if rest > 0 and math.isinf(edge):
        return edge
    exact = (value_sum + (Fraction(edge) * rest if rest > 0 else 0)) / weight_total
    return float(exact)


def cannot_meet(bound: float, bar: float, *, strict: bool = False, greater_is_better: bool = True) -> bool:
    """True when even the best reachable score `bound` fails :func:`meets` ``(bar, strict)``.

    Because the final score is never better than `bound`, ``cannot_meet(bound) => not meets(final)``: stopping
    then gives exactly the decision that a full evaluation would give.
    """
    return not meets(bound, bar, strict=strict, greater_is_better=greater_is_better)


def exact_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``sum(values) / sum(weights)`` computed exactly and rounded once (independent of order and batching)."""
    total = sum((Fraction(float(v)) for v in values), Fraction(0))
    weight = sum((Fraction(float(w)) for w in weights), Fraction(0))
    if weight == 0:
        raise EvaluationError("cannot average over zero weight (no tokens or no examples to evaluate)")
    return float(total / weight)


__all__ = [
    "MetricLike",
    "ComputeMetrics",
    "MetricSuite",
    "BoundedMean",
    "load_metric",
    "local_metric_path",
    "metric_id",
    "default_greater_is_better",
    "register_bounded_mean",
    "get_bounded_mean",
    "meets",
    "cannot_meet",
    "best_reachable",
    "exact_mean",
]
