"""Ingredient provenance: what a fine-tune records about itself so that a later soup can verify and describe it.

A fine-tune published by :class:`~hf_soups.callback.SoupCallback` carries its provenance twice, in one commit:

- ``hf_soups_ingredient.json`` (:data:`~hf_soups.candidates.INGREDIENT_FILE`): base model id and revision sha,
  training hyper-parameters, final held-out metrics, step, trial, library versions;
- the model card metadata (written with `ModelCardData`/`EvalResult`, never by hand): ``base_model``,
  ``base_model_revision``, ``hyperparameters`` and a ``model-index`` with the eval results.

:mod:`hf_soups.candidates` reads the json first (then the card), :mod:`hf_soups.lineage` checks the base and its
revision from it before any weight is downloaded, and the soup's card shows the hyper-parameters.
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .candidates import INGREDIENT_FILE

#: Keys of the Trainer's eval metrics that describe the run, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step", "model_preparation_time")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*/[A-Za-z0-9][A-Za-z0-9._\-]*$")


def is_hub_id(text: Optional[str]) -> bool:
    """Whether `text` looks like a Hub repo id (``owner/name``) rather than a local path."""
    return bool(text) and not Path(str(text)).expanduser().exists() and bool(_REPO_ID_RE.match(str(text)))


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a TrainingArguments value (enums to their value)."""
    value = getattr(value, "value", value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def training_hyperparameters(args: Any, state: Any = None, *, world_size: int = 1) -> Dict[str, Any]:
    """The training hyper-parameters of a run, read from `transformers.TrainingArguments` (and `TrainerState`).

    Args:
        args: the run's `TrainingArguments`.
        state: the `TrainerState` (adds, in a hyper-parameter search, the trial's params).
        world_size: number of processes (for the total batch size).

    Returns:
        ``learning_rate``, ``seed``, ``num_train_epochs`` (or ``max_steps``), ``per_device_train_batch_size``,
        ``total_train_batch_size``, ``gradient_accumulation_steps``, ``weight_decay``, ``warmup_steps``,
        ``lr_scheduler_type``, ``optim``; plus ``trial_params`` in a search. (The step of the weights is recorded
        apart, in :func:`ingredient_record`.)

    Example:
        >>> from transformers import TrainingArguments
        >>> training_hyperparameters(TrainingArguments("out", learning_rate=3e-5))["learning_rate"]
        3e-05
    """
    hp: Dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "weight_decay": args.weight_decay,
        "warmup_steps": getattr(args, "warmup_steps", 0),
        "lr_scheduler_type": getattr(args, "lr_scheduler_type", None),
        "optim": getattr(args, "optim", None),
    }
    if getattr(args, "max_steps", -1) and args.max_steps > 0:
        hp["max_steps"] = args.max_steps
    else:
        hp["num_train_epochs"] = args.num_train_epochs
    if getattr(args, "warmup_ratio", None):
        hp["warmup_ratio"] = args.warmup_ratio
    if state is not None:
        if getattr(state, "trial_params", None):
            hp["trial_params"] = {k: _plain(v) for k, v in dict(state.trial_params).items()}
    return {k: _plain(v) if k != "trial_params" else v for k, v in hp.items()}


def eval_metrics(logs: Mapping[str, Any], prefix: str = "eval_") -> Dict[str, float]:
    """The model metrics of a Trainer eval log, prefix stripped (``eval_accuracy`` -> ``accuracy``), loss last.

    Run statistics (runtime, samples per second, epoch) are left out.
    """
    out: Dict[str, float] = {}
    for key, value in logs.items():
        if not key.startswith(prefix) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name = key[len(prefix):]
        if name in _NOT_METRICS:
            continue
        out[name] = float(value)
    if "loss" in out:  # the model's task metrics first (the card's model-index lists them in this order)
        out["loss"] = out.pop("loss")
    return out


def last_eval_metrics(log_history: Any, *, step: Optional[int] = None) -> Dict[str, float]:
    """The latest eval metrics in a Trainer's ``state.log_history`` (at `step` when given); empty when none."""
    for entry in reversed(list(log_history or [])):
        if step is not None and entry.get("step") != step:
            continue
        metrics = eval_metrics(entry)
        if metrics:
            return metrics
    return {}


def ingredient_record(
    *,
    base_model: Optional[str],
    base_model_revision: Optional[str],
    hyperparameters: Mapping[str, Any],
    metrics: Optional[Mapping[str, float]] = None,
    dataset: Optional[str] = None,
    step: Optional[int] = None,
    trial: Optional[str] = None,
    source: str = "trained",
) -> Dict[str, Any]:
    """The content of ``hf_soups_ingredient.json``.

    Args:
        base_model: the base repo id (or local folder) the run started from.
        base_model_revision: its commit sha (or the folder's content hash).
        hyperparameters: from :func:`training_hyperparameters`.
        metrics: final held-out metrics (prefix-free names).
        dataset: the held-out dataset's name, when known.
        step: the training step of these weights.
        trial: the hyper-parameter search trial, when in one.
        source: ``"trained"`` (end of training) or ``"checkpoint"``.
    """
    from .soup import _version

    return {
        "hf_soups_ingredient": 1,
        "base_model": base_model,
        "base_model_revision": base_model_revision,
        "hyperparameters": dict(hyperparameters),
        "metrics": dict(metrics or {}),
        "dataset": dataset,
        "step": step,
        "trial": trial,
        "source": source,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "libraries": {n: _version(n) for n in ("hf-soups", "transformers", "torch", "accelerate")},
        "python": platform.python_version(),
    }


def ingredient_card(record: Mapping[str, Any], *, model_name: str, pipeline_tag: Optional[str] = None):
    """The model card of an ingredient: metadata (base, revision, hyper-parameters, model-index) and a body.

    Returns:
        A `huggingface_hub.ModelCard`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = record.get("base_model")
    dataset = record.get("dataset") or "held-out"
    eval_results = [
        EvalResult(task_type=pipeline_tag or "other", dataset_type=dataset, dataset_name=dataset,
                   metric_type=name, metric_name=name, metric_value=float(value))
        for name, value in (record.get("metrics") or {}).items()
    ] or None
    extra: Dict[str, Any] = {}
    if record.get("base_model_revision"):
        extra["base_model_revision"] = record["base_model_revision"]
    if record.get("hyperparameters"):
        extra["hyperparameters"] = dict(record["hyperparameters"])
    data = ModelCardData(
        model_name=model_name,
        base_model=base if is_hub_id(base) else None,
        base_model_relation="finetune" if is_hub_id(base) else None,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["hf-soups-ingredient"],
        eval_results=eval_results,
        **extra,
    )
    rev = f" at revision `{record['base_model_revision']}`" if record.get("base_model_revision") else ""
    lines = [
        f"# {model_name}", "",
        f"A fine-tune of `{base or 'an unrecorded base'}`{rev}, published with its provenance by hf-soups "
        f"(`SoupCallback`) so that model soups can verify it and show how it was trained.", "",
        "## Training hyper-parameters", "",
        "| name | value |", "|---|---|",
    ]
    lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |"
              for k, v in (record.get("hyperparameters") or {}).items()]
    if record.get("metrics"):
        lines += ["", f"## Held-out metrics ({dataset})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in record["metrics"].items()]
    lines += ["", f"Full provenance: `{INGREDIENT_FILE}`.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_ingredient(folder: str | Path, record: Mapping[str, Any], *, model_name: Optional[str] = None,
                     pipeline_tag: Optional[str] = None) -> Path:
    """Write ``hf_soups_ingredient.json`` and a model card (README.md) into a saved model folder.

    Args:
        folder: a `save_pretrained` folder.
        record: from :func:`ingredient_record`.
        model_name: the name shown in the card (default: the folder name).
        pipeline_tag: the Hub pipeline tag (default: from the config's architectures).

    Returns:
        The folder.
    """
    folder = Path(folder)
    if pipeline_tag is None and (folder / "config.json").exists():
        from .card import pipeline_tag_for

        pipeline_tag = pipeline_tag_for(json.loads((folder / "config.json").read_text()))
    (folder / INGREDIENT_FILE).write_text(json.dumps(dict(record), indent=2, default=str))
    ingredient_card(record, model_name=model_name or folder.name, pipeline_tag=pipeline_tag).save(
        str(folder / "README.md"))
    return folder


__all__ = [
    "eval_metrics",
    "ingredient_card",
    "ingredient_record",
    "is_hub_id",
    "last_eval_metrics",
    "training_hyperparameters",
    "write_ingredient",
]
