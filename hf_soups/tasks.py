"""Task adapters: what to feed a model for one kind of task, and how to score its outputs.

An adapter is a small class behind a registry (:func:`register_task`, :func:`get_task`, :func:`infer_task`). It
turns a dataset into model inputs once (:meth:`TaskAdapter.preprocess`), pads a batch (:meth:`collate`), runs a
forward pass that returns per-example outputs (:meth:`forward`), and turns the gathered outputs into metrics
(:meth:`compute`). The :class:`~hf_soups.evaluation.Evaluator` does the rest (batching, processes, caching).

Adding a task touches this file only: subclass :class:`TaskAdapter` and decorate it with ``@register_task``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, Union

import numpy as np
import torch

from .errors import EvaluationError
from .metrics import MetricSuite, exact_mean
from .progress import get_logger

logger = get_logger(__name__)

Columns = Dict[str, Optional[str]]


@dataclass
class Prepared:
    """A dataset preprocessed for one task: per-example model inputs, labels and weights.

    Attributes:
        features: model inputs, one array per example (``input_ids``, ``pixel_values``, ...).
        labels: the label id of each example (classification), else None.
        weights: the weight of each example in a mean metric (1 per example; tokens for a causal LM).
        lengths: sequence lengths, used to sort batches by length (None: keep the order).
        pad_values: the padding value of each variable-length feature.
        id2label: the label map the labels were checked against (classification).
    """

    features: Dict[str, List[np.ndarray]]
    labels: Optional[np.ndarray]
    weights: np.ndarray
    lengths: Optional[np.ndarray] = None
    pad_values: Dict[str, int] = field(default_factory=dict)
    id2label: Optional[Dict[int, str]] = None

    def __len__(self) -> int:
        return len(self.weights)


_TASKS: Dict[str, Type["TaskAdapter"]] = {}


def register_task(cls: Type["TaskAdapter"]) -> Type["TaskAdapter"]:
    """Class decorator: make an adapter available by its ``name`` to :func:`get_task`."""
    _TASKS[cls.name] = cls
    return cls


def available_tasks() -> List[str]:
    """Names of the registered tasks."""
    return sorted(_TASKS)


def get_task(task: Union[str, "TaskAdapter"], columns: Optional[Mapping[str, Optional[str]]] = None) -> "TaskAdapter":
    """Return an adapter instance for `task`.

    Args:
        task: a registered name (``"sequence-classification"``) or an adapter (returned as is).
        columns: the dataset columns to use for each role of the task (``{"text": "sentence"}``).

    Returns:
        The adapter.

    Raises:
        EvaluationError: unknown task name.

    Example:
        >>> get_task("sequence-classification", {"text": "sentence"}).name
        'sequence-classification'
    """
    if isinstance(task, TaskAdapter):
        return task
    aliases = {"text-classification": "sequence-classification", "text-generation": "causal-lm"}
    name = aliases.get(task, task)
    if name not in _TASKS:
        raise EvaluationError(f"unknown task {task!r}", hint=f"use one of {available_tasks()}")
    return _TASKS[name](columns)


def infer_task(config_or_model: Any) -> str:
    """Guess the task from a model or its config (``architectures``, e.g. ``BertForSequenceClassification``).

    Raises:
        EvaluationError: the architecture names no known task; pass ``task=`` explicitly.

    Example:
        >>> from transformers import BertConfig
        >>> infer_task(BertConfig(architectures=["BertForSequenceClassification"]))
        'sequence-classification'
    """
    if isinstance(config_or_model, torch.nn.Module):
        names = [type(config_or_model).__name__]
    else:
        names = list(getattr(config_or_model, "architectures", None) or [])
    for arch in names:
        for cls in _TASKS.values():
            if any(arch.endswith(s) for s in cls.architecture_suffixes):
                return cls.name
    raise EvaluationError(
        f"cannot infer the task from architectures {names}", hint=f"pass task= one of {available_tasks()}"
    )


def _normalized_id2label(config: Any) -> Dict[int, str]:
    return {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}


class TaskAdapter(ABC):
    """Base class of task adapters.

    Args:
        columns: dataset column per role (``{"text": "sentence", "text_pair": None, "label": "label"}``); a role
            left out is found among the usual column names.
    """

    name: ClassVar[str]
    auto_model_class: ClassVar[str]
    architecture_suffixes: ClassVar[Tuple[str, ...]] = ()
    roles: ClassVar[Tuple[str, ...]] = ()
    optional_roles: ClassVar[Tuple[str, ...]] = ()
    candidates: ClassVar[Dict[str, Tuple[str, ...]]] = {}
    default_metric: ClassVar[Optional[str]] = "accuracy"
    builtin_metrics: ClassVar[Tuple[str, ...]] = ()  # metrics the adapter computes itself (no evaluate module)
    supports_logits: ClassVar[bool] = True

    def __init__(self, columns: Optional[Mapping[str, Optional[str]]] = None):
        unknown = set(columns or {}) - set(self.roles)
        if unknown:
            raise EvaluationError(f"unknown column roles {sorted(unknown)} for task {self.name!r}; roles: {list(self.roles)}")
        self.columns: Columns = dict(columns or {})

    # ---------------------------------------------------------------------------------------------- loading

    def load_model(self, folder: str, **kwargs: Any) -> torch.nn.Module:
        """Load a model of this task with ``transformers.AutoModelFor...``."""
        import transformers

        return getattr(transformers, self.auto_model_class).from_pretrained(folder, **kwargs)

    def load_processor(self, folder: str) -> Any:
        """Load the tokenizer (or image processor) saved with a model."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)

    # ---------------------------------------------------------------------------------------------- columns

    def resolve_columns(self, column_names: List[str]) -> Columns:
        """Map each role to a dataset column: the one given, else the first usual name present.

        Raises:
            EvaluationError: a given column is missing, or a required role has no column; lists the columns.
        """
        out: Columns = {}
        for role in self.roles:
            if role in self.columns:
                col = self.columns[role]
                if col is not None and col not in column_names:
                    raise EvaluationError(
                        f"column {col!r} (the {role!r} column) is not in the dataset; available columns: {column_names}",
                        hint=f"pass columns={{{role!r}: <one of {column_names}>}}",
                    )
                out[role] = col
                continue
            found = next((c for c in self.candidates.get(role, ()) if c in column_names), None)
            if found is None and role not in self.optional_roles:
                raise EvaluationError(
                    f"no {role!r} column found for task {self.name!r} (looked for {list(self.candidates.get(role, ()))}); "
                    f"available columns: {column_names}",
                    hint=f"pass columns={{{role!r}: <one of {column_names}>}}",
                )
            out[role] = found
        return out

    # ---------------------------------------------------------------------------------------------- per task

    @abstractmethod
    def preprocess(self, dataset: Any, processor: Any, config: Any, *, max_length: int) -> Prepared:
        """Turn a `datasets.Dataset` into model inputs, once (labels checked against ``config``)."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Run the model on a batch; return per-example outputs (first dimension = batch)."""

    @abstractmethod
    def compute(self, outputs: Dict[str, np.ndarray], suite: Optional[MetricSuite]) -> Dict[str, Any]:
        """Metrics from the outputs of every example (gathered, in dataset order)."""

    def unit_values(self, outputs: Dict[str, torch.Tensor], metric: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Per-example ``(value_sum, weight)`` of a mean metric, for early rejection; None if not supported."""
        return None

    def example_quality(self, outputs: Dict[str, np.ndarray], metric: str) -> Optional[np.ndarray]:
        """How well each example is handled, higher is better, for ordering an early-rejection evaluation.

        The numbers only decide which examples a bounded evaluation looks at first (the likely failures), never
        a score or a decision, so any monotone proxy of the selection metric's per-example value will do.
        `outputs` are in dataset order. None (the default) means "no useful order": length order is kept.
        """
        return None

    def training_inputs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Model keyword arguments for which ``model(**inputs).loss`` is the training loss (a collated batch
        holds ``labels`` for classification already)."""
        return batch

    def check_model(self, config: Any, prepared: Prepared) -> None:
        """Raise :class:`EvaluationError` if a model does not fit the prepared data (e.g. another label map)."""

    def logits(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits in per-example outputs (for ensembles)."""
        if not self.supports_logits:
            raise EvaluationError(f"task {self.name!r} has no per-example logits to ensemble")
        return outputs["logits"]

    # ---------------------------------------------------------------------------------------------- batching

    @staticmethod
    def collate(rows: List[Dict[str, Any]], pad_values: Mapping[str, int]) -> Dict[str, torch.Tensor]:
        """Stack one batch, padding variable-length 1-d features on the right (dynamic padding)."""
        batch: Dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            first = values[0]
            if np.ndim(first) == 0:
                batch[key] = torch.as_tensor(np.asarray(values))
            elif key in pad_values:
                width = max(len(v) for v in values)
                out = np.full((len(values), width), pad_values[key], dtype=np.asarray(first).dtype)
                for i, v in enumerate(values):
                    out[i, : len(v)] = v
                batch[key] = torch.from_numpy(out)
            else:
                batch[key] = torch.from_numpy(np.stack(values))
        return batch


class _ClassificationTask(TaskAdapter):
    """Shared by text and image classification: labels, argmax predictions, accuracy as a mean."""

    def forward(self, model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        return {"logits": logits, "labels": labels}

    def compute(self, outputs: Dict[str, np.ndarray], suite: Optional[MetricSuite]) -> Dict[str, Any]:
        if suite is None:
            raise EvaluationError(f"task {self.name!r} needs a metric")
        logits, labels = outputs["logits"], outputs["labels"]
        return suite.compute(logits.argmax(-1), labels, logits=logits, label_ids=labels)

    def unit_values(self, outputs: Dict[str, torch.Tensor], metric: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if metric != "accuracy":
            return None
        correct = (outputs["logits"].argmax(-1) == outputs["labels"]).to(torch.float64)
        return correct, torch.ones_like(correct)

    def example_quality(self, outputs: Dict[str, np.ndarray], metric: str) -> Optional[np.ndarray]:
        """The label's logit minus the best other logit: negative where the prediction is wrong, small where
        the model is unsure (where a changed model flips its prediction first)."""
        if metric != "accuracy":
            return None
        logits = np.asarray(outputs["logits"], dtype=np.float64)
        labels = np.asarray(outputs["labels"]).astype(np.int64)
        rows = np.arange(len(labels))
        own = logits[rows, labels]
        others = logits.copy()
        others[rows, labels] = -np.inf
        return own - others.max(-1)

    def check_model(self, config: Any, prepared: Prepared) -> None:
        id2label = _normalized_id2label(config)
        if prepared.id2label is not None and id2label != prepared.id2label:
            raise EvaluationError(
                f"the model's labels {id2label} differ from the labels {prepared.id2label} the evaluation data was "
                "prepared with",
                hint="evaluate models with the same id2label, or make a new Evaluator",
            )

    def label_ids(self, dataset: Any, column: str, config: Any) -> Tuple[np.ndarray, Dict[int, str]]:
        """The label id of each example, checked against the model's ``id2label``/``label2id``.

        Labels may be ids (plain integers or a ``ClassLabel``) or names. Names are mapped through the model's
        label map; a ``ClassLabel`` whose names are the model's names is remapped by name.

        Raises:
            EvaluationError: the dataset's labels and the model's labels do not match (names it, lists both).
        """
        from datasets import ClassLabel

        id2label = _normalized_id2label(config)
        n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
        generic = all(name == f"LABEL_{i}" for i, name in id2label.items())
        label2id = {name: i for i, name in id2label.items()}
        folded = {name.lower(): i for name, i in label2id.items()}
        feature = dataset.features[column]
        values = _column(dataset, column)
        model_desc = f"the model's labels {id2label}"

        def by_name(names: List[str]) -> List[int]:
            missing = [x for x in names if x not in label2id and str(x).lower() not in folded]
            if missing:
                raise EvaluationError(
                    f"label names {sorted(set(map(str, missing)))[:10]} in column {column!r} are not in {model_desc}",
                    hint="evaluate on a dataset whose labels are the model's, or map the labels first",
                )
            return [label2id[x] if x in label2id else folded[str(x).lower()] for x in names]

        if isinstance(feature, ClassLabel):
            if len(feature.names) != n and not generic:
                raise EvaluationError(
                    f"column {column!r} has {len(feature.names)} classes {feature.names} but {model_desc}"
                )
            ids = np.asarray(values, dtype=np.int64)
            if (ids < 0).any():
                raise EvaluationError(f"column {column!r} has label -1 (an unlabeled split?); pick a labeled split")
            if not generic:
                ids = np.asarray(by_name(feature.names), dtype=np.int64)[ids]
        elif all(isinstance(v, str) for v in values):
            if generic and not all(v in label2id for v in values):
                raise EvaluationError(
                    f"column {column!r} holds label names but the model has no label names ({id2label})",
                    hint="set id2label/label2id in the model config, or convert the labels to ids",
                )
            ids = np.asarray(by_name(values), dtype=np.int64)
        elif all(isinstance(v, (int, np.integer, bool)) for v in values):
            ids = np.asarray(values, dtype=np.int64)
        else:
            kinds = sorted({type(v).__name__ for v in values})
            raise EvaluationError(f"column {column!r} holds {kinds} labels; expected label ids or names")
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            hint = (
                "-1 usually marks an unlabeled split: evaluate on a labeled split"
                if (bad < 0).any()
                else f"the dataset has classes the model does not ({n} labels): evaluate on a split with the "
                "model's label set, or filter/map the labels first"
            )
            raise EvaluationError(
                f"column {column!r} has label ids {sorted(set(bad.tolist()))[:10]} outside 0..{n - 1} of {model_desc}",
                hint=hint,
            )
        return ids, id2label


@register_task
class SequenceClassificationTask(_ClassificationTask):
    """Single sentences or sentence pairs, ``AutoModelForSequenceClassification``.

    Roles: ``text``, ``text_pair`` (optional), ``label``.
    """

    name = "sequence-classification"
    auto_model_class = "AutoModelForSequenceClassification"
    architecture_suffixes = ("ForSequenceClassification",)
    roles = ("text", "text_pair", "label")
    optional_roles = ("text_pair",)
    candidates = {
        "text": ("sentence1", "premise", "question1", "question", "sentence", "text", "content", "review"),
        "label": ("label", "labels", "target"),
    }
    _pairs = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2", "question": "sentence"}

    def resolve_columns(self, column_names: List[str]) -> Columns:
        out = super().resolve_columns(column_names)
        if "text_pair" not in self.columns and out["text"] in self._pairs:
            pair = self._pairs[out["text"]]
            out["text_pair"] = pair if pair in column_names else None
        return out

    def preprocess(self, dataset: Any, processor: Any, config: Any, *, max_length: int) -> Prepared:
        cols = self.resolve_columns(list(dataset.column_names))
        labels, id2label = self.label_ids(dataset, cols["label"], config)
        texts = _strings(dataset, cols["text"])
        pairs = _strings(dataset, cols["text_pair"]) if cols.get("text_pair") else None
        features: Dict[str, List[np.ndarray]] = {}
        for start in range(0, len(texts), 4096):
            chunk_pairs = pairs[start : start + 4096] if pairs is not None else None
            enc = processor(texts[start : start + 4096], chunk_pairs, truncation=True, max_length=max_length)
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key in enc:
                    features.setdefault(key, []).extend(np.asarray(x, dtype=np.int64) for x in enc[key])
        pad_id = processor.pad_token_id
        if pad_id is None:
            pad_id = getattr(config, "pad_token_id", None) or 0
        pads = {"input_ids": int(pad_id), "attention_mask": 0, "token_type_ids": int(processor.pad_token_type_id)}
        return Prepared(
            features=features,
            labels=labels,
            weights=np.ones(len(labels)),
            lengths=np.asarray([len(x) for x in features["input_ids"]]),
            pad_values=pads,
            id2label=id2label,
        )


@register_task
class ImageClassificationTask(_ClassificationTask):
    """Images, ``AutoModelForImageClassification`` with the ``AutoImageProcessor`` saved with the model.

    Roles: ``image`` (PIL images or arrays), ``label``.
    """

    name = "image-classification"
    auto_model_class = "AutoModelForImageClassification"
    architecture_suffixes = ("ForImageClassification", "ForImageClassificationWithTeacher")
    roles = ("image", "label")
    candidates = {"image": ("image", "img", "picture"), "label": ("label", "labels", "fine_label")}

    def load_processor(self, folder: str) -> Any:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(folder)

    def preprocess(self, dataset: Any, processor: Any, config: Any, *, max_length: int) -> Prepared:
        cols = self.resolve_columns(list(dataset.column_names))
        labels, id2label = self.label_ids(dataset, cols["label"], config)
        pixels: List[np.ndarray] = []
        for start in range(0, len(dataset), 256):
            rows = dataset.select_columns([cols["image"]])[start : start + 256]
            images = [_rgb(x) for x in rows[cols["image"]]]
            pixels.extend(np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32))
        return Prepared(features={"pixel_values": pixels}, labels=labels, weights=np.ones(len(labels)), id2label=id2label)


@register_task
class CausalLMTask(TaskAdapter):
    """Language modelling, ``AutoModelForCausalLM``: mean token loss and perplexity (lower is better).

    The loss is the mean negative log-likelihood over every predicted token of the split (token-weighted, like
    perplexity evaluations): ``sum of token losses / number of tokens``, computed exactly and rounded once, so it
    does not depend on batching or the number of processes. Texts with fewer than 2 tokens predict nothing and
    are dropped. Role: ``text``.
    """

    name = "causal-lm"
    auto_model_class = "AutoModelForCausalLM"
    architecture_suffixes = ("ForCausalLM", "LMHeadModel")
    roles = ("text",)
    candidates = {"text": ("text", "content", "sentence", "document")}
    default_metric = None
    builtin_metrics = ("loss", "perplexity")
    supports_logits = False

    def preprocess(self, dataset: Any, processor: Any, config: Any, *, max_length: int) -> Prepared:
        cols = self.resolve_columns(list(dataset.column_names))
        texts = _strings(dataset, cols["text"])
        ids: List[np.ndarray] = []
        for start in range(0, len(texts), 4096):
            enc = processor(texts[start : start + 4096], truncation=True, max_length=max_length)
            ids.extend(np.asarray(x, dtype=np.int64) for x in enc["input_ids"])
        kept = [x for x in ids if len(x) >= 2]
        if len(kept) < len(ids):
            logger.info("causal-lm: dropped %d texts with fewer than 2 tokens", len(ids) - len(kept))
        if not kept:
            raise EvaluationError(f"no text in column {cols['text']!r} has 2 tokens or more; nothing to evaluate")
        pad_id = processor.pad_token_id if processor.pad_token_id is not None else processor.eos_token_id
        return Prepared(
            features={"input_ids": kept, "attention_mask": [np.ones_like(x) for x in kept]},
            labels=None,
            weights=np.asarray([len(x) - 1 for x in kept], dtype=np.float64),
            lengths=np.asarray([len(x) for x in kept]),
            pad_values={"input_ids": int(pad_id or 0), "attention_mask": 0},
        )

    def forward(self, model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        return {"loss_sum": nll.to(torch.float64).sum(1), "n_tokens": (target != -100).sum(1).to(torch.float64)}

    def training_inputs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return {**batch, "labels": labels}

    def compute(self, outputs: Dict[str, np.ndarray], suite: Optional[MetricSuite]) -> Dict[str, Any]:
        loss = exact_mean(outputs["loss_sum"], outputs["n_tokens"])
        perplexity = math.exp(loss) if loss < 709 else math.inf
        return {"loss": loss, "perplexity": perplexity}

    def unit_values(self, outputs: Dict[str, torch.Tensor], metric: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return (outputs["loss_sum"], outputs["n_tokens"]) if metric == "loss" else None

    def example_quality(self, outputs: Dict[str, np.ndarray], metric: str) -> Optional[np.ndarray]:
        """Minus each example's summed token loss: the examples that add the most loss come first."""
        return -np.asarray(outputs["loss_sum"], dtype=np.float64) if metric == "loss" else None


def _column(dataset: Any, column: str) -> List[Any]:
    """One column as a list (``dataset[column]`` is a lazy column that is slow to iterate)."""
    return dataset.select_columns([column])[:][column]


def _strings(dataset: Any, column: str) -> List[str]:
    values = _column(dataset, column)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise EvaluationError(f"column {column!r} row {bad} is {values[bad]!r}, not a string")
    return list(values)


def _rgb(image: Any) -> Any:
    mode = getattr(image, "mode", None)
    return image.convert("RGB") if mode is not None and mode != "RGB" else image


__all__ = [
    "Prepared",
    "TaskAdapter",
    "SequenceClassificationTask",
    "ImageClassificationTask",
    "CausalLMTask",
    "register_task",
    "get_task",
    "infer_task",
    "available_tasks",
]
