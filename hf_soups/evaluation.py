"""Evaluator: a held-out split + `evaluate` metrics + Accelerate, with a score cache and exact early rejection.

One :class:`Evaluator` is made per held-out set and reused for every model (ingredients, then soup trials):
the split is preprocessed once, sorted by length once, and the data loader is prepared by an ``Accelerator``
once. Each :meth:`Evaluator.evaluate` call runs the live model in ``torch.inference_mode`` over length-sorted,
dynamically padded batches; per-example outputs are collected with ``accelerator.gather_for_metrics``, so the
metric sees every example exactly once, whatever the number of processes.

Early rejection (``bar=``): for metrics registered as bounded means (:mod:`hf_soups.metrics`; accuracy, and a
causal LM's loss), the evaluation stops as soon as even a perfect rest of the split could not make the score
meet the bar. The result then says ``stopped_early=True``, ``score=None`` and ``bound`` = the best score that was
still reachable (which fails the bar). :meth:`EvalResult.meets` gives the same answer as a full evaluation
would, by construction (see :func:`hf_soups.metrics.best_reachable`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
import torch

from .distributed import run_on_main
from .errors import EvaluationError
from .metrics import (
    ComputeMetrics,
    MetricLike,
    MetricSuite,
    best_reachable,
    cannot_meet,
    default_greater_is_better,
    get_bounded_mean,
    meets,
)
from .progress import get_logger, progress
from .tasks import Prepared, TaskAdapter, get_task, infer_task

logger = get_logger(__name__)

# Batches per block of a priority order (see Evaluator._priority_order): large enough that length sorting inside
# a block keeps padding low, small enough that the likely failures are still seen first. On the SST-2 greedy
# benchmark (scripts/bench_greedy.py) the 5 trials evaluated 640 examples with blocks of 2 or 4, 1248 with 8.
_PRIORITY_BLOCK_BATCHES = 4


@dataclass
class EvalSettings:
    """How to evaluate.

    Attributes:
        batch_size: examples per batch and per process.
        max_length: truncate sequences to this many tokens (also capped by the tokenizer and the model).
        max_samples: evaluate on a random subset of this size (drawn once with `seed`); None for all.
        seed: seed of that subset.
        mixed_precision: ``"bf16"`` or ``"fp16"`` autocast, on GPU only (ignored with a warning on CPU).
    """

    batch_size: int = 32
    max_length: int = 128
    max_samples: Optional[int] = None
    seed: int = 0
    mixed_precision: Optional[str] = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 2:
            raise EvaluationError(f"batch_size must be >= 1 and max_length >= 2 (got {self.batch_size}, {self.max_length})")
        if self.max_samples is not None and self.max_samples < 1:
            raise EvaluationError(f"max_samples must be None or >= 1 (got {self.max_samples})")
        if self.mixed_precision in ("no", ""):
            self.mixed_precision = None
        if self.mixed_precision not in (None, "bf16", "fp16"):
            raise EvaluationError(f"mixed_precision must be None, 'bf16' or 'fp16' (got {self.mixed_precision!r})")


@dataclass
class EvalResult:
    """The outcome of one evaluation.

    Attributes:
        metrics: every metric (empty when stopped early).
        score: the selection metric, or None when stopped early.
        n_examples: examples in the evaluation split.
        n_evaluated: examples actually evaluated (fewer when stopped early).
        stopped_early: the evaluation stopped because the bar could no longer be met.
        cached: the result came from the cache (no forward pass ran).
        seconds: wall time of this call.
        bound: when stopped early, the best score that was still reachable (it fails the bar).
        selection_metric: the name of `score`.
        greater_is_better: the direction of `score`.
        example_quality: after a full evaluation of a bounded-mean metric, how well each example was handled
            (dataset order, higher is better; see :meth:`TaskAdapter.example_quality`). It orders later
            early-rejection runs (``priority=``). Kept in the score cache (as float32) and given back with a
            cached full result; not part of :meth:`to_dict`.
    """

    metrics: Dict[str, Any]
    score: Optional[float]
    n_examples: int
    n_evaluated: int
    stopped_early: bool = False
    cached: bool = False
    seconds: float = 0.0
    bound: Optional[float] = None
    selection_metric: Optional[str] = None
    greater_is_better: bool = True
    example_quality: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def meets(self, bar: float, *, strict: bool = False) -> bool:
        """Whether the score reaches `bar` (``>=``, or ``>`` if strict; reversed when lower is better).

        Equal to the decision of a full evaluation, also for a result that stopped early for this bar (or a
        laxer one): such a result never meets it.
        """
        if self.score is None:
            if self.bound is not None and cannot_meet(self.bound, bar, strict=strict, greater_is_better=self.greater_is_better):
                return False
            raise EvaluationError(f"this result stopped early at another bar (bound {self.bound}); re-evaluate for {bar}")
        return meets(self.score, bar, strict=strict, greater_is_better=self.greater_is_better)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-friendly dict (round-trips through :meth:`from_dict`, less `example_quality`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "example_quality"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalResult":
        """Rebuild a result from :meth:`to_dict` output (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _load_split(dataset: Any, config: Optional[str], split: str) -> Any:
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise EvaluationError(f"split {split!r} is not in the dataset; available splits: {list(dataset)}", hint="pass split=")
        return dataset[split]
    if not isinstance(dataset, (str, os.PathLike)):
        raise EvaluationError(f"cannot evaluate on {type(dataset).__name__}; pass a datasets.Dataset, a DatasetDict or a name")
    from datasets import load_dataset

    name = os.fspath(dataset)
    try:
        return load_dataset(name, config, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise EvaluationError(f"dataset {name!r} has no split {split!r}: {err}", hint="pass split= one of them") from err
        raise EvaluationError(f"dataset {name!r} (config {config!r}) could not be loaded: {err}") from err
    except Exception as err:  # DatasetNotFoundError, FileNotFoundError, ConnectionError, ...
        raise EvaluationError(
            f"dataset {name!r} (config {config!r}, split {split!r}) could not be loaded: {type(err).__name__}: {err}",
            hint="pass a datasets.Dataset or a local path, or set HF_ENDPOINT to a reachable Hub",
        ) from err


def _has_gpu() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


class _Rows(torch.utils.data.Dataset):
    """Prepared examples in length-sorted order; each row carries its original index as ``__index__``."""

    def __init__(self, prepared: Prepared, order: np.ndarray):
        self.prepared, self.order = prepared, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        j = int(self.order[i])
        row = {k: v[j] for k, v in self.prepared.features.items()}
        if self.prepared.labels is not None:
            row["labels"] = self.prepared.labels[j]
        row["__index__"] = j
        return row


class Evaluator:
    """Evaluate models on one held-out split.

    Args:
        dataset: a ``datasets.Dataset``, a ``DatasetDict`` (`split` is taken) or a name/path for
            ``datasets.load_dataset(dataset, dataset_config, split=split)``.
        task: a task name (:func:`hf_soups.tasks.available_tasks`) or adapter; None infers it from the model.
        metric: `evaluate` id(s), module path(s) or module(s) (see :class:`~hf_soups.metrics.MetricSuite`); None
            means the task's default (``"accuracy"`` for classification, loss/perplexity for a causal LM), or
            only `compute_metrics` when that is given.
        selection_metric: the metric that ranks models (default: the first one computed).
        greater_is_better: direction of the selection metric (default from its name: losses are lower-better).
        columns: dataset column per task role, e.g. ``{"text": "sentence", "text_pair": None, "label": "label"}``.
        dataset_config: the dataset configuration name, when `dataset` is a name.
        split: the split, when `dataset` is a name or a ``DatasetDict``.
        settings: batch size, truncation, subset, mixed precision.
        compute_metrics: a Trainer-style ``compute_metrics(EvalPrediction) -> dict`` (classification).
        cache_dir: where to cache results by ``(key, fingerprint)``; None disables the cache.
        accelerator: an ``accelerate.Accelerator`` (default: a new one).

    Raises:
        EvaluationError: missing split or column, unloadable metric, bad settings.

    Example:
        >>> ev = Evaluator(ds, task="sequence-classification", metric=local_metric_path("accuracy"))  # doctest: +SKIP
        >>> ev.prepare("path/to/finetune")                                                           # doctest: +SKIP
        >>> ev.evaluate(model, key=commit_sha).score                                                 # doctest: +SKIP
        0.8234
    """

    def __init__(
        self,
        dataset: Any,
        *,
        task: Union[str, TaskAdapter, None] = None,
        metric: Optional[MetricLike] = None,
        selection_metric: Optional[str] = None,
        greater_is_better: Optional[bool] = None,
        columns: Optional[Mapping[str, Optional[str]]] = None,
        dataset_config: Optional[str] = None,
        split: str = "validation",
        settings: Optional[EvalSettings] = None,
        compute_metrics: Optional[ComputeMetrics] = None,
        cache_dir: Union[str, Path, None] = None,
        accelerator: Any = None,
    ):
        self.settings = settings or EvalSettings()
        data = _load_split(dataset, dataset_config, split)
        if self.settings.max_samples is not None and self.settings.max_samples < len(data):
            data = data.shuffle(seed=self.settings.seed).select(range(self.settings.max_samples))
        self.dataset = data
        self._metric_spec, self._compute_metrics, self._columns = metric, compute_metrics, columns
        self._selection, self._gib = selection_metric, greater_is_better
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._accelerator = accelerator
        if accelerator is not None and not getattr(accelerator, "even_batches", True):
            raise EvaluationError("the accelerator has even_batches=False; the evaluator needs even batches")
        self.task: Optional[TaskAdapter] = None
        self.suite: Optional[MetricSuite] = None
        self.selection_metric: Optional[str] = None
        self.greater_is_better: bool = True
        self._prepared: Optional[Prepared] = None
        self._loader: Any = None
        self._fingerprint: Optional[str] = None
        self.cache_writes = 0  # cache files written by this process (only the main process writes)
        self._warned_precision = False
        if task is not None:
            self._set_task(get_task(task, columns))

    # ------------------------------------------------------------------------------------------------- set-up

    @property
    def accelerator(self) -> Any:
        """The ``Accelerator`` (created on first use when none was given).

        Under ``torchrun``/``accelerate launch`` on a machine without a GPU, the default accelerator is a CPU one
        (gloo), so that the processes share the work instead of each evaluating everything.
        """
        if self._accelerator is None:
            from accelerate import Accelerator

            kwargs: Dict[str, Any] = {}
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_gpu():
                kwargs["cpu"] = True
            self._accelerator = Accelerator(**kwargs)
        return self._accelerator

    def _set_task(self, task: TaskAdapter) -> None:
        task.resolve_columns(list(self.dataset.column_names))  # fail now on a missing column
        self.task = task
        metric = self._metric_spec
        if task.builtin_metrics:
            if metric is not None or self._compute_metrics is not None:
                raise EvaluationError(f"task {task.name!r} computes {list(task.builtin_metrics)} itself; drop metric=")
            self.selection_metric = self._selection or task.builtin_metrics[0]
            if self.selection_metric not in task.builtin_metrics:
                raise EvaluationError(f"selection_metric {self.selection_metric!r} is not one of {list(task.builtin_metrics)}")
        else:
            if metric is None and self._compute_metrics is None:
                metric = task.default_metric
            self.suite = MetricSuite(metric, self._compute_metrics)
            names = [n for n in self.suite.module_names if n]
            self.selection_metric = self._selection or (names[0] if names else None)
        gib = self._gib
        if gib is None:
            gib = default_greater_is_better(self.selection_metric) if self.selection_metric else True
        self.greater_is_better = gib

    def prepare(self, model_or_folder: Any, tokenizer_or_processor: Any = None) -> None:
        """Preprocess the split for a model (once per evaluator) and check the model's labels.

        The first call tokenizes (or processes images), checks the dataset's labels against the model's
        ``id2label``/``label2id``, sorts by length and prepares the data loader. Later calls only check that the
        model has the same label map; the preprocessing is reused.

        Args:
            model_or_folder: a model, or a folder (or Hub id) with its config and tokenizer.
            tokenizer_or_processor: the tokenizer or image processor (default: loaded from the folder, or from
                the model's ``name_or_path``).

        Raises:
            EvaluationError: labels that do not match, missing columns, no processor to be found.
        """
        from transformers import AutoConfig

        if isinstance(model_or_folder, torch.nn.Module):
            config = model_or_folder.config
            folder = getattr(config, "_name_or_path", "") or getattr(model_or_folder, "name_or_path", "")
        else:
            folder = os.fspath(model_or_folder)
            try:
                config = AutoConfig.from_pretrained(folder)
            except Exception as err:
                raise EvaluationError(f"cannot read the model config in {folder!r}: {err}") from err
        if self.task is None:
            self._set_task(get_task(infer_task(model_or_folder if isinstance(model_or_folder, torch.nn.Module) else config), self._columns))
        assert self.task is not None
        if self._prepared is not None:
            self.task.check_model(config, self._prepared)
            return
        processor = tokenizer_or_processor
        if processor is None:
            if not folder:
                raise EvaluationError("the model has no name_or_path to load a tokenizer from", hint="pass tokenizer_or_processor=")
            try:
                processor = self.task.load_processor(folder)
            except Exception as err:
                raise EvaluationError(f"cannot load the tokenizer/processor of {folder!r}: {err}", hint="pass tokenizer_or_processor=") from err
        max_length = self._max_length(processor, config)
        prepared = self.task.preprocess(self.dataset, processor, config, max_length=max_length)
        if len(prepared) == 0:
            raise EvaluationError("the evaluation split is empty", hint="check split= and max_samples=")
        order = np.argsort(-prepared.lengths, kind="stable") if prepared.lengths is not None else np.arange(len(prepared))
        self._prepared = prepared
        self._loader = self._make_loader(order)
        self._fingerprint = self._compute_fingerprint(prepared, max_length)
        logger.info("prepared %d examples for %s (fingerprint %s)", len(prepared), self.task.name, self._fingerprint[:12])

    def _make_loader(self, order: np.ndarray) -> Any:
        """A data loader over the prepared examples in `order`, prepared by the accelerator."""
        from functools import partial

        assert self._prepared is not None and self.task is not None
        loader = torch.utils.data.DataLoader(
            _Rows(self._prepared, order),
            batch_size=self.settings.batch_size,
            shuffle=False,
            collate_fn=partial(self.task.collate, pad_values=self._prepared.pad_values),
        )
        return self.accelerator.prepare_data_loader(loader)

    def _priority_order(self, priority: Any) -> np.ndarray:
        """Examples by decreasing `priority`, in blocks of a few batches that are each sorted by length.

        Sorting every example by priority alone would pad each batch to a random long example; blocks keep
        most of length sorting's saving while the likely failures still come first.
        """
        prepared = self._prepared
        assert prepared is not None
        values = np.asarray(priority, dtype=np.float64).reshape(-1)
        if len(values) != len(prepared):
            raise EvaluationError(f"priority has {len(values)} values but the split has {len(prepared)} examples")
        by_priority = np.argsort(-values, kind="stable")
        if prepared.lengths is None:
            return by_priority
        block = self.settings.batch_size * self.accelerator.num_processes * _PRIORITY_BLOCK_BATCHES
        parts = []
        for start in range(0, len(by_priority), block):
            part = by_priority[start : start + block]
            parts.append(part[np.argsort(-prepared.lengths[part], kind="stable")])
        return np.concatenate(parts)

    def _max_length(self, processor: Any, config: Any) -> int:
        length = self.settings.max_length
        limit = getattr(processor, "model_max_length", None)
        if isinstance(limit, int) and limit < 1_000_000:
            length = min(length, limit)
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(positions, int):
            length = min(length, positions)
        return length

    @property
    def _precision(self) -> Optional[str]:
        """The autocast precision actually used: the setting on an accelerator, None on CPU."""
        mp = self.settings.mixed_precision
        if mp is not None and self.accelerator.device.type == "cpu":
            if not self._warned_precision:
                logger.warning("mixed_precision=%r is ignored on CPU", mp)
                self._warned_precision = True
            return None
        return mp

    def _compute_fingerprint(self, prepared: Prepared, max_length: int) -> str:
        head = {
            "task": self.task.name if self.task else None,
            "settings": {**asdict(self.settings), "mixed_precision": self._precision, "max_length": max_length},
            "metrics": self.suite.ids if self.suite else [],
            "selection": [self.selection_metric, self.greater_is_better],
        }
        digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
        for key in sorted(prepared.features):  # the preprocessed content: data, columns, labels, tokenizer
            digest.update(key.encode())
            for arr in prepared.features[key]:
                digest.update(str(arr.shape).encode())
                digest.update(np.ascontiguousarray(arr).tobytes())
        for arr in (prepared.labels, prepared.weights):
            if arr is not None:
                digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()

    @property
    def fingerprint(self) -> str:
        """Hash of the preprocessed split (content, labels, tokenizer output), settings and metric ids.

        Raises:
            EvaluationError: before :meth:`prepare`.
        """
        if self._fingerprint is None:
            raise EvaluationError("the evaluator is not prepared yet", hint="call prepare(model_or_folder) first")
        return self._fingerprint

    @property
    def n_examples(self) -> int:
        """Examples in the prepared split."""
        if self._prepared is None:
            raise EvaluationError("the evaluator is not prepared yet", hint="call prepare(model_or_folder) first")
        return len(self._prepared)

    # ------------------------------------------------------------------------------------------------- running

    def _ready(self, model: torch.nn.Module) -> Prepared:
        self.prepare(model)
        assert self._prepared is not None
        if not getattr(model, "hf_device_map", None):
            param = next(model.parameters(), None)
            if param is not None and param.device != self.accelerator.device:
                model.to(self.accelerator.device)
        return self._prepared

    def _autocast(self) -> Any:
        mp = self._precision
        if mp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if mp == "bf16" else torch.float16
        return torch.autocast(device_type=self.accelerator.device.type, dtype=dtype)

    def _run(
        self,
        model: torch.nn.Module,
        *,
        bar: Optional[float] = None,
        strict: bool = False,
        desc: Optional[str] = None,
        priority: Any = None,
    ) -> Dict[str, Any]:
        """Forward every batch (or until the bar cannot be met); returns gathered outputs and the stop state."""
        prepared, acc, task = self._prepared, self.accelerator, self.task
        assert prepared is not None and task is not None
        rule = get_bounded_mean(self.selection_metric) if bar is not None and self._bar_supported() else None
        # Only a bounded run can stop early, so only there does the order matter; the metric sees every example
        # in dataset order either way (see _in_order), so scores and decisions do not depend on it.
        loader = self._make_loader(self._priority_order(priority)) if rule is not None and priority is not None else self._loader
        total_weight = sum((Fraction(float(w)) for w in prepared.weights), Fraction(0))
        value_sum, weight_seen = Fraction(0), Fraction(0)
        chunks: List[Dict[str, torch.Tensor]] = []
        n_seen, bound, stopped = 0, None, False
        bar_ = progress(total=len(loader), desc=desc or "evaluate", unit="batch", disable=None if acc.is_main_process else True)
        was_training = model.training
        model.eval()
        iterator: Iterator[Dict[str, torch.Tensor]] = iter(loader)
        try:
            with torch.inference_mode(), self._autocast():
                for batch in iterator:
                    index = batch.pop("__index__")
                    out = task.forward(model, batch)
                    out["__index__"] = index
                    out = {k: v.detach().cpu() for k, v in acc.gather_for_metrics(out).items()}
                    chunks.append(out)
                    n_seen += len(out["__index__"])
                    bar_.update(1)
                    if rule is not None:
                        values, weights = task.unit_values(out, rule.name)  # type: ignore[misc]
                        value_sum += sum((Fraction(v) for v in values.tolist()), Fraction(0))
                        weight_seen += sum((Fraction(w) for w in weights.tolist()), Fraction(0))
                        bound = best_reachable(rule, value_sum, weight_seen, total_weight, greater_is_better=self.greater_is_better)
                        # Every process holds the same gathered values, so every process stops at the same step.
                        # After the last batch there is nothing left to save: finish and compute the metrics.
                        if n_seen < len(prepared) and cannot_meet(bound, bar, strict=strict, greater_is_better=self.greater_is_better):  # type: ignore[arg-type]
                            stopped = True
                            break
        finally:
            if hasattr(iterator, "close"):
                iterator.close()  # type: ignore[union-attr]
            if hasattr(loader, "end"):
                loader.end()  # leave Accelerate's dataloader state clean after an early stop
            bar_.close()
            model.train(was_training)
        outputs = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
        return {"outputs": outputs, "n_seen": n_seen, "stopped": stopped, "bound": bound}

    def _bar_supported(self) -> bool:
        name = self.selection_metric
        if name is None or get_bounded_mean(name) is None:
            return False
        if self.task is not None and name in self.task.builtin_metrics:
            return True
        return self.suite is not None and self.suite.compute_metrics is None and name in self.suite.module_names

    def _in_order(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        """Outputs in dataset order (gathered order is length-sorted and interleaved across processes)."""
        order = torch.argsort(outputs["__index__"])
        return {k: v[order].numpy() for k, v in outputs.items() if k != "__index__"}

    def on_main_process(self, fn: Any) -> Any:
        """Run ``fn()`` on the main process only and give every process its result.

        Use it for work that must happen once (writing files, pushing); the other processes wait for the result,
        which is broadcast to them (it must be picklable). With one process it is just ``fn()``.

        Example:
            >>> result = ev.on_main_process(lambda: mix(folders, weights, "soup/"))  # doctest: +SKIP
        """
        return self._on_main(fn)

    def _on_main(self, fn: Any) -> Any:
        """Run `fn` on the main process only and give every process its result (or its error)."""
        return run_on_main(self.accelerator, fn, what="evaluation")

    def evaluate(
        self,
        model: torch.nn.Module,
        *,
        key: Optional[str] = None,
        bar: Optional[float] = None,
        strict: bool = False,
        desc: Optional[str] = None,
        priority: Any = None,
    ) -> EvalResult:
        """Evaluate a (live) model on the split.

        Args:
            model: the model; moved once to the accelerator's device, put in eval mode for the call.
            key: what identifies these weights (a commit sha, a soup's tensor hash); with a `cache_dir`, the
                result is cached under ``(key, fingerprint)`` and returned from there next time.
            bar: stop early once the selection metric can no longer meet `bar` (bounded-mean metrics only;
                otherwise the evaluation runs to the end and `bar` changes nothing).
            strict: the bar must be beaten (``>``), not only reached (``>=``).
            desc: the progress bar label.
            priority: with `bar`, one number per example (dataset order): higher ones are evaluated first, so
                that a model that cannot meet the bar is found out after fewer examples. Pass what is known of
                where the model is likely to fail, e.g. the :attr:`EvalResult.example_quality` of the model to
                beat, negated. Scores and decisions are the same for any priority; only the examples evaluated
                before an early stop change.

        Returns:
            An :class:`EvalResult`. ``result.meets(bar, strict=strict)`` is the accept/reject decision.

        Raises:
            EvaluationError: model labels that do not match, a metric that fails, a missing selection metric.
        """
        start = time.perf_counter()
        prepared = self._ready(model)
        cached = self._cache_get(key, bar, strict) if key is not None and self.cache_dir is not None else None
        if cached is not None:
            cached.cached, cached.seconds = True, time.perf_counter() - start
            return cached
        run = self._run(model, bar=bar, strict=strict, desc=desc, priority=priority)
        common = dict(n_examples=len(prepared), n_evaluated=run["n_seen"], selection_metric=self.selection_metric, greater_is_better=self.greater_is_better)
        if run["stopped"]:
            result = EvalResult(metrics={}, score=None, stopped_early=True, bound=run["bound"], **common)  # type: ignore[arg-type]
        else:
            outputs = self._in_order(run["outputs"])
            metrics = self._on_main(lambda: self.task.compute(outputs, self.suite))  # type: ignore[union-attr]
            if self.selection_metric is None:
                self.selection_metric = next(iter(metrics))
                common["selection_metric"] = self.selection_metric
            if self.selection_metric not in metrics:
                raise EvaluationError(f"selection_metric {self.selection_metric!r} is not among the metrics {list(metrics)}")
            score = metrics[self.selection_metric]
            result = EvalResult(metrics=metrics, score=float(score), **common)  # type: ignore[arg-type]
            if self._bar_supported():
                result.example_quality = self.task.example_quality(outputs, self.selection_metric)  # type: ignore[union-attr,arg-type]
        result.seconds = time.perf_counter() - start
        if key is not None and self.cache_dir is not None:
            self._cache_put(key, result)
        return result

    def training_batches(
        self, batch_size: int, seed: int = 0, *, epochs: Optional[int] = None
    ) -> Iterator[Dict[str, torch.Tensor]]:
        """Shuffled batches of the prepared split as model keyword arguments with labels, on the device.

        For learning on the held-out split (the learned soup): ``model(**batch).loss`` is the task's training
        loss. Batches are drawn from the whole split with a generator seeded by `seed` (a new permutation each
        epoch) and are not sharded: every process gets the same batches, so every process learns the same
        thing. The last batch of an epoch may be smaller.

        Args:
            batch_size: examples per batch.
            seed: seed of the shuffling.
            epochs: how many passes over the split; None for an endless stream.

        Raises:
            EvaluationError: before :meth:`prepare`, or a batch size below 1.

        Example:
            >>> batches = ev.training_batches(32, seed=0)                              # doctest: +SKIP
            >>> model(**next(batches)).loss                                            # doctest: +SKIP
        """
        prepared, task = self._prepared, self.task
        if prepared is None or task is None:
            raise EvaluationError("the evaluator is not prepared yet", hint="call prepare(model_or_folder) first")
        if batch_size < 1:
            raise EvaluationError(f"batch_size must be >= 1 (got {batch_size})")
        rows = _Rows(prepared, np.arange(len(prepared)))
        rng = np.random.default_rng(seed)
        device = self.accelerator.device
        epoch = 0
        while epochs is None or epoch < epochs:
            perm = rng.permutation(len(prepared))
            for start in range(0, len(perm), batch_size):
                batch = task.collate([rows[int(i)] for i in perm[start : start + batch_size]], prepared.pad_values)
                batch.pop("__index__")
                yield {k: v.to(device) for k, v in task.training_inputs(batch).items()}
            epoch += 1

    def predict_logits(self, model: torch.nn.Module, *, desc: Optional[str] = None) -> torch.Tensor:
        """The model's logits for every example, gathered from all processes, in dataset order (on CPU).

        Raises:
            EvaluationError: the task has no per-example logits (causal LM).
        """
        self._ready(model)
        assert self.task is not None
        if not self.task.supports_logits:
            raise EvaluationError(f"task {self.task.name!r} has no per-example logits to ensemble")
        outputs = self._in_order(self._run(model, desc=desc or "logits")["outputs"])
        return torch.from_numpy(outputs["logits"])

    def score_logits(self, logits: Any) -> Dict[str, Any]:
        """Metrics of given logits (e.g. an ensemble's mean logits), in dataset order, against the labels.

        Raises:
            EvaluationError: not prepared, wrong shape, or the task has no logits.
        """
        prepared = self._prepared
        if prepared is None or self.task is None:
            raise EvaluationError("the evaluator is not prepared yet", hint="call prepare(model_or_folder) first")
        if not self.task.supports_logits or prepared.labels is None:
            raise EvaluationError(f"task {self.task.name!r} has no per-example logits to score")
        array = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != len(prepared):
            raise EvaluationError(f"expected logits of shape ({len(prepared)}, num_labels), got {tuple(array.shape)}")
        outputs = {"logits": array, "labels": prepared.labels}
        return self._on_main(lambda: self.task.compute(outputs, self.suite))  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------------- cache

    def cache_path(self, key: str) -> Path:
        """The cache file of `key` under the current fingerprint."""
        if self.cache_dir is None:
            raise EvaluationError("no cache_dir was given")
        digest = hashlib.sha256(f"{key}\0{self.fingerprint}".encode()).hexdigest()[:40]
        return self.cache_dir / f"{digest}.json"

    def _cache_get(self, key: str, bar: Optional[float], strict: bool) -> Optional[EvalResult]:
        def read() -> Optional[Dict[str, Any]]:
            path = self.cache_path(key)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            if data.get("key") != key or data.get("fingerprint") != self.fingerprint:
                return None
            result = data.get("result") or {}
            if not result.get("stopped_early"):
                return {**result, "example_quality": data.get("example_quality")}
            # A stopped result answers any bar it cannot meet either; otherwise evaluate again.
            if bar is not None and cannot_meet(result["bound"], bar, strict=strict, greater_is_better=result["greater_is_better"]):
                return result
            return None

        data = self._on_main(read)
        if data is None:
            return None
        quality = _decode_quality(data.pop("example_quality", None), data.get("n_examples"))
        result = EvalResult.from_dict(data)
        result.example_quality = quality
        return result

    def _cache_put(self, key: str, result: EvalResult) -> None:
        if not self.accelerator.is_main_process:
            return
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "fingerprint": self.fingerprint, "result": {**result.to_dict(), "cached": False}}
        if result.example_quality is not None:
            # kept so that a greedy soup built on cached ingredient scores still orders its trials' examples
            entry["example_quality"] = _encode_quality(result.example_quality)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(entry, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_path(key))  # atomic: readers see the old file or the new one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.cache_writes += 1


def _encode_quality(quality: np.ndarray) -> str:
    """Per-example quality as base64 of little-endian float32: 4 bytes an example in the JSON cache entry
    (a JSON list of floats would take about 20), and the entry stays one file, written atomically."""
    return base64.b64encode(np.asarray(quality, dtype="<f4").tobytes()).decode("ascii")


def _decode_quality(text: Any, n_examples: Any) -> Optional[np.ndarray]:
    """The inverse of :func:`_encode_quality`; None for an entry without one or one that does not fit."""
    if not isinstance(text, str):
        return None
    try:
        quality = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float64)
    except ValueError:
        return None
    return quality if quality.shape == (n_examples,) else None


def summary_table(results: Mapping[str, EvalResult]) -> str:
    """A plain-text table of results, one row per name.

    Example:
        >>> print(summary_table({"run-a": result_a, "soup": soup_result}))  # doctest: +SKIP
        name   score   evaluated  early  cached  seconds  accuracy  f1
        run-a  0.8200  872/872    no     no      1.3      0.8200    0.8311
    """
    keys: List[str] = []
    for r in results.values():
        keys.extend(k for k in r.metrics if k not in keys)

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    header = ["name", "score", "evaluated", "early", "cached", "seconds"] + keys
    rows = [header]
    for name, r in results.items():
        score = fmt(r.score) if not r.stopped_early else f"<{fmt(r.bound)}" if r.greater_is_better else f">{fmt(r.bound)}"
        rows.append(
            [name, score, f"{r.n_evaluated}/{r.n_examples}", "yes" if r.stopped_early else "no", "yes" if r.cached else "no", f"{r.seconds:.1f}"]
            + [fmt(r.metrics.get(k)) for k in keys]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


__all__ = ["EvalSettings", "EvalResult", "Evaluator", "summary_table"]
