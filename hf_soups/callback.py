"""`SoupCallback`: soups from inside a `transformers.Trainer` run.

Add one callback to a Trainer; when training ends, the trained model joins the named candidates (pulled from the
Hub, pinned, verified against the base this run started from), the soup is built on the Trainer's
``eval_dataset`` with its ``compute_metrics`` (or a given metric) through the same
:class:`~hf_soups.evaluation.Evaluator` as :class:`~hf_soups.builder.SoupBuilder`, its metrics are logged like any
Trainer metrics (``soup_`` prefix), and it is pushed with its card.

.. code-block:: python

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      compute_metrics=compute_metrics,
                      callbacks=[SoupCallback(candidates=["org/run-a", "org/run-b"], method="greedy",
                                              push_to="org/my-soup")])
    trainer.train()

Events (following TRL's callbacks: small state, IO on the world-zero process only):

- ``on_init_end`` / ``on_train_begin``: find the Trainer, record the base the model was loaded from (repo id and
  commit sha, or local folder and content hash; ``base="id@rev"`` names it explicitly), and check the named
  candidates against it from metadata alone, before any training step or weight download.
- ``on_save`` (fires after the checkpoint is written and old ones rotated): with ``include_checkpoints=True``,
  snapshot the checkpoint's weights into a folder the callback owns, so ``save_total_limit`` cannot remove it.
- ``on_train_end``: save the trained model with its provenance, publish it (``publish_ingredient_to``), build
  the soup, log ``soup_*`` metrics, optionally load the soup into ``trainer.model``, push it (``push_to``).

Distributed runs: every process takes the same code path. The main process resolves, downloads, writes and
pushes; the others wait (``accelerator.wait_for_everyone``) and receive what they need by broadcast; every
process evaluates its shard inside the Trainer's `Accelerator` (data-parallel, gathered once).

Resuming from a checkpoint keeps the collected ingredients: the callback is an ``ExportableState`` and restores
itself from the checkpoint's ``trainer_state.json`` (with or without
``TrainingArguments.restore_callback_states_from_checkpoint``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import shutil
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .candidates import Candidate, folder_hash, parse_reference, resolve_all
from .distributed import run_on_main
from .errors import HfSoupsError, RecipeError
from .hub import Hub
from .lineage import verify_lineage
from .progress import get_logger
from .provenance import (
    is_hub_id,
    ingredient_record,
    last_eval_metrics,
    training_hyperparameters,
    write_ingredient,
)

logger = get_logger(__name__)

#: Files of a Trainer checkpoint that are training state, not the model: never copied into a snapshot.
_TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
_SNAPSHOT_PREFIX = "step-"

# Arguments that cannot go into trainer_state.json (objects, callables), by callback uid, so that an instance the
# Trainer re-creates from `state()` in the same process gets them back.
_OBJECT_ARGS: Dict[str, Dict[str, Any]] = {}
_uids = itertools.count()


class SoupCallback(TrainerCallback, ExportableState):
    """Build (and push) a model soup when a `transformers.Trainer` run ends; publish runs as soup ingredients.

    Args:
        candidates: other fine-tunes of the same base to soup with the trained model (``org/run-a``,
            ``org/run-b@<sha>``, folders). Empty: no soup unless `include_checkpoints` (publish-only use).
        method: ``greedy`` (default), ``uniform``, ``weighted``, ``learned`` or ``interpolate``.
        base: the base model as ``id@rev`` or a folder; default: the one the model was loaded from
            (``model.config._name_or_path``, pinned to the commit in the download cache, else to the Hub's head).
        metric: an `evaluate` metric id or path (or module) to score with; default: the Trainer's
            ``compute_metrics``, else the task's default metric.
        eval_dataset: the held-out split; default: the Trainer's ``eval_dataset`` (it must keep its raw text
            column(s): the evaluator tokenizes with each ingredient's tokenizer).
        include_checkpoints: also soup the checkpoints this run saves (snapshotted at ``on_save``).
        push_to: push the soup to this repo (weights, card, ``soup.json``; one commit).
        private: create `push_to` / `publish_ingredient_to` as private repos.
        publish_ingredient_to: push the trained model, with its provenance, to this repo. ``{trial}`` in it is
            replaced by the hyper-parameter search trial (or the number of the `train()` call, from 0).
        load_soup_into_model: copy the soup's weights into ``trainer.model`` (so a later ``save_model`` or
            ``push_to_hub`` saves the soup).
        output_dir: where the callback keeps the trained model, checkpoint snapshots and the soup; default
            ``<args.output_dir>/hf-soups`` (``/run-<trial>`` inside a hyper-parameter search).
        token: Hub token for pulls and pushes (never stored in the Trainer state or printed).
        check_candidates_at_start: verify the candidates against the base from metadata at ``on_train_begin``,
            so that an incompatible one fails before any training step.
        dataset_name: the held-out dataset's name for cards (default: from the dataset's info).
        cache_dir: the evaluation score cache (default ``$HF_HOME/hf_soups/scores``).
        check_weights: run the weight-space lineage checks (head initialisation) when building.
        soup_options: further :class:`~hf_soups.builder.SoupBuilder` options (``greedy``, ``weights``,
            ``max_length``, ``columns``, ``task``, ``max_samples``, ``selection_metric``, ...).

    Attributes:
        soup: the last :class:`~hf_soups.soup.Soup` built (None before).
        soup_metrics: the ``soup_*`` values logged.
        base_record: the base this run started from (``id``, ``revision``, ``local``).
        snapshots: the checkpoint snapshots collected (``step``, ``path``).
        published: the refs published (``org/run-c@<sha>``).
        trained_dir: the folder holding the last trained model.

    Raises (at ``on_train_begin`` / ``on_train_end``, out of ``trainer.train()``):
        IncompatibleCandidatesError: a candidate does not share this run's base (revision), architecture, labels...
            At train end the message says where the trained model was saved.
        CandidateNotFoundError, EvaluationError, PushError: see :mod:`hf_soups.errors`.

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
        ...                   callbacks=[SoupCallback(["org/run-a", "org/run-b"], push_to="org/soup")])
        ...                                                                   # doctest: +SKIP
        >>> trainer.train()                                                   # doctest: +SKIP
        >>> [h for h in trainer.state.log_history if "soup_accuracy" in h]    # doctest: +SKIP
    """

    def __init__(
        self,
        candidates: Optional[Sequence[str]] = None,
        method: str = "greedy",
        *,
        base: Optional[str] = None,
        metric: Any = None,
        eval_dataset: Any = None,
        include_checkpoints: bool = False,
        push_to: Optional[str] = None,
        private: Optional[bool] = None,
        publish_ingredient_to: Optional[str] = None,
        load_soup_into_model: bool = False,
        output_dir: Optional[str] = None,
        token: Optional[str] = None,
        check_candidates_at_start: bool = True,
        dataset_name: Optional[str] = None,
        cache_dir: Optional[str] = None,
        check_weights: bool = True,
        soup_options: Optional[Mapping[str, Any]] = None,
        _uid: Optional[str] = None,
    ) -> None:
        self.candidates = [str(c) for c in (candidates or [])]
        for ref in self.candidates:
            parse_reference(ref)  # fail now on a malformed reference
        self.method = method
        self.base = base
        self.include_checkpoints = include_checkpoints
        self.push_to = push_to
        self.private = private
        self.publish_ingredient_to = publish_ingredient_to
        self.load_soup_into_model = load_soup_into_model
        self.output_dir = output_dir
        self.token = token
        self.check_candidates_at_start = check_candidates_at_start
        self.dataset_name = dataset_name
        self.cache_dir = cache_dir
        self.check_weights = check_weights
        self._uid = _uid or f"{os.getpid()}-{next(_uids)}"
        objects = _OBJECT_ARGS.get(self._uid, {})
        self.metric = metric if metric is not None else objects.get("metric")
        self.eval_dataset = eval_dataset if eval_dataset is not None else objects.get("eval_dataset")
        options = dict(soup_options or {})
        self.soup_options = options or dict(objects.get("soup_options") or {})
        _OBJECT_ARGS[self._uid] = {"metric": self.metric, "eval_dataset": self.eval_dataset,
                                   "soup_options": self.soup_options}
        if self.token is None and "token" in objects:
            self.token = objects["token"]
        if self.token is not None:
            _OBJECT_ARGS[self._uid]["token"] = self.token
        # state (exported with state())
        self.base_record: Optional[Dict[str, Any]] = None
        self.snapshots: List[Dict[str, Any]] = []
        self.published: List[str] = []
        self.runs = 0
        # run-time only
        self.soup: Any = None
        self.soup_metrics: Dict[str, float] = {}
        self.trained_dir: Optional[Path] = None
        self._trainer_ref: Optional[Callable[[], Any]] = None
        self._saving_step: Optional[int] = None

    # ------------------------------------------------------------------------------------------ exported state

    def state(self) -> dict:
        """The callback's state for ``trainer_state.json``: its JSON-able arguments and the collected ingredients.

        The token is never included. A checkpoint being written includes its own snapshot (taken right after, at
        ``on_save``), so resuming from it keeps it.
        """
        args: Dict[str, Any] = {
            "candidates": list(self.candidates), "method": self.method, "base": self.base,
            "include_checkpoints": self.include_checkpoints, "push_to": self.push_to, "private": self.private,
            "publish_ingredient_to": self.publish_ingredient_to, "load_soup_into_model": self.load_soup_into_model,
            "output_dir": self.output_dir, "check_candidates_at_start": self.check_candidates_at_start,
            "dataset_name": self.dataset_name, "cache_dir": self.cache_dir, "check_weights": self.check_weights,
            "_uid": self._uid,
        }
        if isinstance(self.metric, str):
            args["metric"] = self.metric
        if self.soup_options and _jsonable(self.soup_options):
            args["soup_options"] = dict(self.soup_options)
        snapshots = [dict(s) for s in self.snapshots]
        step = self._saving_step
        if step is not None and self.include_checkpoints and not any(s["step"] == step for s in snapshots):
            trainer = self._trainer()
            if trainer is not None:
                snapshots.append({"step": step, "path": str(self._snapshot_dir(trainer) / f"{_SNAPSHOT_PREFIX}{step}"),
                                  "pending": True})
        return {
            "args": args,
            "attributes": {"base_record": self.base_record, "snapshots": snapshots, "published": list(self.published),
                           "runs": self.runs},
        }

    def _restore_from(self, state: Any) -> None:
        """Merge the ingredients recorded in a resumed run's ``state.stateful_callbacks`` into this callback."""
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if not stored:
            return
        entries = stored if isinstance(stored, list) else [stored]
        mine = [e for e in entries if (e.get("args") or {}).get("_uid") == self._uid]
        entry = (mine or entries)[0]
        attrs = entry.get("attributes") or {}
        known = {s["step"] for s in self.snapshots}
        for snap in attrs.get("snapshots") or []:
            if snap.get("step") not in known and snap.get("step", 0) <= state.global_step:
                self.snapshots.append({k: v for k, v in snap.items() if k != "pending"})
        self.snapshots.sort(key=lambda s: s["step"])
        self.published = list(dict.fromkeys(list(attrs.get("published") or []) + self.published))
        self.runs = max(self.runs, int(attrs.get("runs") or 0))
        if self.base_record is None and attrs.get("base_record"):
            self.base_record = dict(attrs["base_record"])

    # ------------------------------------------------------------------------------------------ the Trainer

    def bind(self, trainer: Any) -> "SoupCallback":
        """Attach the callback to `trainer` explicitly (it finds the Trainer that calls it otherwise)."""
        self._trainer_ref = weakref.ref(trainer)
        return self

    def _trainer(self) -> Any:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None:
            return trainer
        # Callbacks are not given the Trainer; find the one whose event loop is calling us.
        from transformers import Trainer

        frame = inspect.currentframe()
        try:
            while frame is not None:
                obj = frame.f_locals.get("self")
                if isinstance(obj, Trainer) and any(cb is self for cb in obj.callback_handler.callbacks):
                    self._trainer_ref = weakref.ref(obj)
                    return obj
                frame = frame.f_back
        finally:
            del frame
        return None

    def _require_trainer(self) -> Any:
        trainer = self._trainer()
        if trainer is None:
            raise RecipeError(
                "SoupCallback cannot find the Trainer it belongs to",
                hint="Pass it in Trainer(callbacks=[...]) or trainer.add_callback(cb), or call cb.bind(trainer).",
            )
        return trainer

    # ------------------------------------------------------------------------------------------ distributed

    def _on_main(self, trainer: Any, fn: Callable[[], Any], *, what: str) -> Any:
        """Run `fn` on the main process only; every process gets its result, or raises its error (no process is
        left waiting)."""
        return run_on_main(trainer.accelerator, fn, what=what)

    # ------------------------------------------------------------------------------------------ events

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """Find the Trainer (the callback is not handed it)."""
        self._trainer()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Restore collected ingredients on resume, record the base, check the candidates from metadata."""
        trainer = self._require_trainer()
        resuming = state.global_step > 0
        self._restore_from(state)
        if not resuming:
            self.runs += 1
        if self.include_checkpoints and trainer.accelerator.is_main_process:
            self._repair_snapshots(trainer)
        model = model if model is not None else trainer.model
        record = self._on_main(trainer, lambda: self._resolve_base(model), what="recording the base model")
        if record is not None:
            self.base_record = record
        if self.candidates and self.check_candidates_at_start:
            self._on_main(trainer, self._check_candidates, what="checking the candidates")

    def on_step_end(self, args, state, control, **kwargs):
        """Note that a checkpoint is about to be written, so that its state lists its snapshot."""
        self._saving_step = state.global_step if control.should_save else None

    def on_epoch_end(self, args, state, control, **kwargs):
        self._saving_step = state.global_step if control.should_save else self._saving_step

    def on_save(self, args, state, control, **kwargs):
        """Snapshot the checkpoint just written (after rotation), so ``save_total_limit`` cannot remove it."""
        self._saving_step = None
        if not self.include_checkpoints:
            return
        trainer = self._require_trainer()
        step = state.global_step
        target = self._snapshot_dir(trainer) / f"{_SNAPSHOT_PREFIX}{step}"
        if trainer.accelerator.is_main_process:
            source = self._checkpoint_dir(trainer, step)
            self._snapshot(trainer, source, target, step)
        if not any(s["step"] == step for s in self.snapshots):
            self.snapshots.append({"step": step, "path": str(target)})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Save (and publish) the trained model, then build, log, load and push the soup."""
        trainer = self._require_trainer()
        acc = trainer.accelerator
        work = self._work_dir(trainer)
        trained = work / "trained"
        metrics = self._final_metrics(trainer)
        self._save_trained(trainer, trained, metrics)
        self.trained_dir = trained
        ref = str(trained)
        try:
            if self.publish_ingredient_to:
                repo = self._format_repo(self.publish_ingredient_to)
                ref = self._on_main(trainer, lambda: self._publish(trained, repo), what=f"publishing to {repo}")
                if ref not in self.published:
                    self.published.append(ref)
            if self.candidates or self.snapshots:
                self._make_soup(trainer, ref, work)
        except HfSoupsError as err:
            note = (f"\n  -> The trained model is saved in {trained}"
                    + (f" (published as {ref})" if ref != str(trained) else "")
                    + "; training is not lost: load it with from_pretrained, or soup it later with hf-soups build.")
            err.args = (f"{err.args[0] if err.args else ''}{note}",)
            raise
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ base

    def _resolve_base(self, model: Any) -> Optional[Dict[str, Any]]:
        """The base this run started from: ``{"id", "revision", "local"}`` (None when it cannot be told)."""
        hub = Hub(token=self.token)
        if self.base:
            repo_id, revision, path = parse_reference(self.base)
            if path is not None:
                return {"id": str(path.resolve()), "revision": folder_hash(path), "local": True, "source": "base="}
            sha = hub.repo_info(repo_id, revision, ref=self.base).sha  # type: ignore[arg-type]
            return {"id": repo_id, "revision": sha, "local": False, "source": "base="}
        if model is None:
            return self.base_record
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
        if not name:
            logger.warning("SoupCallback: the model has no name_or_path; pass base='id@rev' to record its base.")
            return self.base_record
        path = Path(str(name)).expanduser()
        if path.is_dir():
            sha = _sha_from_cache_path(path)
            if sha is not None:  # a snapshot folder of the Hub cache: models--org--name/snapshots/<sha>
                return {"id": _repo_from_cache_path(path), "revision": sha, "local": False, "source": "cache path"}
            return {"id": str(path.resolve()), "revision": folder_hash(path), "local": True, "source": "folder"}
        if not is_hub_id(str(name)):
            return self.base_record
        sha = _cached_sha(str(name))
        source = "download cache"
        if sha is None:
            sha = hub.repo_info(str(name), None, ref=str(name)).sha
            source = "Hub head"
        return {"id": str(name), "revision": sha, "local": False, "source": source}

    def _base_ref(self) -> Optional[str]:
        rec = self.base_record
        if not rec or not rec.get("id"):
            return None
        return rec["id"] if rec.get("local") else f"{rec['id']}@{rec['revision']}"

    def _check_candidates(self) -> None:
        """Metadata-only lineage check of the named candidates against the base (no weight download)."""
        hub = Hub(token=self.token)
        cands = resolve_all(self.candidates, hub)
        report = verify_lineage(cands, base=self._base_ref(), hub=hub, check_weights=False)
        report.raise_for_problems()

    # ------------------------------------------------------------------------------------------ folders

    def _trial_name(self, trainer: Any) -> Optional[str]:
        trial = getattr(trainer, "_trial", None)
        if trial is None or getattr(trainer, "hp_search_backend", None) is None:
            return None
        return os.path.basename(trainer._get_output_dir(trial))

    def _trial_label(self, trainer: Any) -> str:
        trial = getattr(trainer, "_trial", None)
        number = getattr(trial, "number", None)
        if number is not None:
            return str(number)
        name = self._trial_name(trainer)
        return name.removeprefix("run-") if name else str(max(self.runs - 1, 0))

    def _format_repo(self, template: str) -> str:
        trainer = self._require_trainer()
        return template.replace("{trial}", self._trial_label(trainer))

    def _work_dir(self, trainer: Any) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.args.output_dir) / "hf-soups"
        trial = self._trial_name(trainer)
        return root / trial if trial else root

    def _snapshot_dir(self, trainer: Any) -> Path:
        return self._work_dir(trainer) / "checkpoints"

    def _checkpoint_dir(self, trainer: Any, step: int) -> Path:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = trainer._get_output_dir(getattr(trainer, "_trial", None))
        return Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"

    # ------------------------------------------------------------------------------------------ snapshots

    def _snapshot(self, trainer: Any, source: Path, target: Path, step: int) -> None:
        """Copy a checkpoint's model files (weights, config, tokenizer; no optimizer or RNG state) and record
        its provenance in the copy. Written to a temporary folder, then renamed (a crash leaves no half copy)."""
        if not source.is_dir():
            logger.warning("SoupCallback: checkpoint %s is not there to snapshot", source)
            return
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file() and item.name not in _TRAINING_STATE_FILES and not item.name.startswith("rng_state"):
                shutil.copy2(item, tmp / item.name)
        record = self._record(trainer, metrics=last_eval_metrics(trainer.state.log_history, step=step),
                              step=step, source="checkpoint")
        write_ingredient(tmp, record, model_name=f"{_SNAPSHOT_PREFIX}{step}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)

    def _repair_snapshots(self, trainer: Any) -> None:
        """On resume, re-take a recorded snapshot whose folder is missing (a crash between save and snapshot)."""
        for snap in self.snapshots:
            path = Path(snap["path"])
            if not path.is_dir():
                self._snapshot(trainer, self._checkpoint_dir(trainer, snap["step"]), path, snap["step"])

    # ------------------------------------------------------------------------------------------ trained model

    def _record(self, trainer: Any, *, metrics: Mapping[str, float], step: int, source: str) -> Dict[str, Any]:
        base = self.base_record or {}
        return ingredient_record(
            base_model=base.get("id"), base_model_revision=base.get("revision"),
            hyperparameters=training_hyperparameters(trainer.args, trainer.state,
                                                     world_size=trainer.accelerator.num_processes),
            metrics=metrics, dataset=self._dataset_name(trainer), step=step,
            trial=self._trial_label(trainer) if getattr(trainer, "_trial", None) is not None else None, source=source,
        )

    def _final_metrics(self, trainer: Any) -> Dict[str, float]:
        """The run's final held-out metrics: the eval logged at the last step, else a fresh `trainer.evaluate()`
        (on every process: it is a collective call), else the latest eval logged."""
        step = trainer.state.global_step
        metrics = last_eval_metrics(trainer.state.log_history, step=step)
        if metrics:
            return metrics
        if self._eval_dataset(trainer) is not None and trainer.eval_dataset is not None:
            try:
                from .provenance import eval_metrics

                return eval_metrics(trainer.evaluate())
            except Exception as err:  # a Trainer that cannot evaluate still gets its model saved
                logger.warning("SoupCallback: final evaluation failed (%s); publishing without metrics", err)
        return last_eval_metrics(trainer.state.log_history)

    def _save_trained(self, trainer: Any, folder: Path, metrics: Mapping[str, float]) -> None:
        """Save the trained model, its tokenizer and provenance into `folder` (main process; others wait)."""
        acc = trainer.accelerator
        state_dict = acc.get_state_dict(trainer.model)  # collective for sharded models: every process calls it
        if acc.is_main_process:
            tmp = folder.with_name(f".{folder.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model = acc.unwrap_model(trainer.model)
            model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
            processor = getattr(trainer, "processing_class", None)
            if processor is None and self.base_record and self.base_record.get("id"):
                try:
                    from transformers import AutoTokenizer

                    processor = AutoTokenizer.from_pretrained(self.base_record["id"])
                except Exception:  # noqa: BLE001 - no tokenizer to ship; evaluation will say so if needed
                    processor = None
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(str(tmp))
            record = self._record(trainer, metrics=metrics, step=trainer.state.global_step, source="trained")
            name = self._format_repo(self.publish_ingredient_to).split("/")[-1] if self.publish_ingredient_to else \
                Path(trainer.args.output_dir).name
            write_ingredient(tmp, record, model_name=name)
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(folder)
            logger.info("SoupCallback: trained model saved in %s", folder)
        acc.wait_for_everyone()

    def _publish(self, folder: Path, repo_id: str) -> str:
        """Push the trained model with its provenance in one commit; return ``repo@sha``."""
        hub = Hub(token=self.token)
        url = hub.push_folder(folder, repo_id, private=self.private,
                              commit_message="Upload fine-tune with its provenance (hf-soups SoupCallback)")
        sha = url.rstrip("/").rsplit("/", 1)[-1]
        if len(sha) != 40:
            sha = hub.repo_info(repo_id, None, ref=repo_id).sha
        logger.info("SoupCallback: published %s@%s", repo_id, sha)
        return f"{repo_id}@{sha}"

    # ------------------------------------------------------------------------------------------ the soup

    def _eval_dataset(self, trainer: Any) -> Any:
        dataset = self.eval_dataset if self.eval_dataset is not None else trainer.eval_dataset
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()))  # Trainer accepts a dict of eval sets: soup on the first
        return dataset

    def _dataset_name(self, trainer: Any) -> Optional[str]:
        if self.dataset_name:
            return self.dataset_name
        dataset = self._eval_dataset(trainer)
        info = getattr(dataset, "info", None)
        return getattr(info, "dataset_name", None) or None

    def _make_soup(self, trainer: Any, trained_ref: str, work: Path) -> None:
        from .builder import SoupBuilder

        acc = trainer.accelerator
        dataset = self._eval_dataset(trainer)
        if dataset is None:
            raise RecipeError("SoupCallback needs a held-out set to build a soup",
                              hint="Give the Trainer an eval_dataset, or pass SoupCallback(eval_dataset=...).")
        final_step = trainer.state.global_step
        snapshot_refs = [
            s["path"] for s in sorted(self.snapshots, key=lambda s: s["step"])
            if not (s["step"] == final_step and not trainer.args.load_best_model_at_end)  # same weights as trained
            and Path(s["path"]).is_dir()
        ]
        refs = [trained_ref] + list(self.candidates) + snapshot_refs
        if len(refs) < 2 and self.method != "interpolate":
            logger.warning("SoupCallback: only the trained model is available (no candidates, no earlier "
                           "checkpoint); no soup is built.")
            return
        base_ref = self._base_ref()

        def prepare() -> List[Candidate]:
            hub = Hub(token=self.token)
            cands = resolve_all(refs, hub)
            # metadata first: a candidate of another base (revision) fails here, before its weights download
            verify_lineage(cands, base=base_ref, hub=hub, check_weights=False).raise_for_problems()
            for cand in cands:
                cand.fetch(hub)
            return cands

        cands = self._on_main(trainer, prepare, what="resolving and downloading the candidates")
        for cand in cands:  # another machine's paths: download there (the main process has pinned the shas)
            if cand._folder is not None and not Path(cand._folder).is_dir():
                cand._folder = None
                cand.fetch(Hub(token=self.token))
        options = dict(self.soup_options)
        args = trainer.args
        options.setdefault("batch_size", args.per_device_eval_batch_size)
        if args.metric_for_best_model and "selection_metric" not in options:
            name = args.metric_for_best_model
            options["selection_metric"] = name[5:] if name.startswith("eval_") else name
            if args.greater_is_better is not None:
                options.setdefault("greater_is_better", args.greater_is_better)
        metric = self.metric
        compute_metrics = trainer.compute_metrics if metric is None else None
        if compute_metrics is not None:
            metric = []  # the Trainer's compute_metrics alone (not on top of the recipe's default "accuracy")
        builder = SoupBuilder(
            cands, self.method, eval_dataset=dataset, metric=metric, compute_metrics=compute_metrics,
            accelerator=acc, token=self.token, cache_dir=self.cache_dir, check_weights=self.check_weights,
            output_dir=work / "soup",
            base=base_ref if self.method == "interpolate" else None, **options,
        )
        if self._dataset_name(trainer):
            builder.config.evaluation.dataset = self._dataset_name(trainer)  # type: ignore[union-attr]
        builder.config.output.overwrite = True  # the soup of this run's previous train() call, if any
        model = acc.unwrap_model(trainer.model)
        # Every process builds (the evaluator is data-parallel); the builder writes `work/soup` on the main process
        # only and points the others' Soup at it. The push stays here, where an error reaches every process.
        soup = builder.build()
        self.soup = soup
        self._log(trainer, soup)
        if self.load_soup_into_model:
            from .modeling import load_folder_into

            load_folder_into(model, soup.folder)
        if self.push_to:
            self._on_main(trainer, lambda: soup.push_to_hub(self.push_to, private=self.private, token=self.token),
                          what=f"pushing the soup to {self.push_to}")

    def _log(self, trainer: Any, soup: Any) -> None:
        """Log the soup's metrics through the Trainer (``state.log_history`` and every reporting integration)."""
        logs: Dict[str, float] = {f"soup_{k}": float(v) for k, v in (soup.metrics or {}).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, value in (soup.references or {}).items():
            if value is not None:
                logs[f"soup_{name}_{soup.selection_metric or 'score'}"] = float(value)
        logs["soup_ingredients"] = float(len(soup.ingredients))
        logs["soup_accepted"] = float(sum(1 for i in soup.ingredients if i.accepted))
        self.soup_metrics = dict(logs)
        trainer.log(dict(logs))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _cached_sha(repo_id: str) -> Optional[str]:
    """The commit of `repo_id`'s main branch in the local download cache (what from_pretrained just loaded)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(path, str):
        return _sha_from_cache_path(Path(path).parent)
    return None


def _sha_from_cache_path(path: Path) -> Optional[str]:
    parts = path.resolve().parts if not path.is_symlink() else path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and i > 0 and parts[i - 1].startswith("models--") and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None


def _repo_from_cache_path(path: Path) -> str:
    for part in path.parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    return str(path)


__all__ = ["SoupCallback"]
