"""The result of a soup: weights, report and provenance; `save_pretrained` and `push_to_hub`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .candidates import SOUP_FILE
from .errors import OutputExistsError
from .lineage import LineageReport
from .progress import get_logger
from .recipe import SoupConfig

logger = get_logger(__name__)


@dataclass
class IngredientReport:
    """One candidate's place in the soup.

    Attributes:
        ref: the reference as given; pinned: ``org/model@sha`` (or the folder); sha: commit sha or content hash.
        weight: its weight in the final soup (0 when rejected).
        score: its held-out score (selection metric), when evaluated.
        metrics: all its held-out metrics.
        accepted: whether it is in the soup.
        hyperparameters: training hyper-parameters it records, if any.
        license: the license its card declares, if any.
    """

    ref: str
    pinned: str
    sha: Optional[str]
    repo_id: Optional[str] = None
    weight: float = 0.0
    score: Optional[float] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    accepted: bool = True
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    license: Optional[str] = None


@dataclass
class Soup:
    """A built soup.

    Attributes:
        folder: the folder holding the soup's weights, config and tokenizer (loadable with `from_pretrained`).
        config: the recipe, candidates pinned to their shas.
        ingredients: per-candidate report.
        lineage: the lineage report the candidates passed.
        tensor_hash: sha256 over the output tensors (same tensors, same hash, whatever the sharding).
        metrics: the soup's held-out metrics (when evaluated).
        score: the soup's selection-metric score.
        references: other scores to compare with: ``best_ingredient``, ``uniform``, ``ensemble``.
        history: for greedy soups, every trial (ingredient, score, accepted, examples evaluated).
        coefficients: for learned soups, the learned mixing coefficients.
        selection_metric, greater_is_better: what `score` measures.
        extra: method-specific details (e.g. chosen alpha).
        plot: path of the greedy-trajectory PNG, when made.
    """

    folder: Path
    config: SoupConfig
    ingredients: List[IngredientReport]
    lineage: Optional[LineageReport] = None
    tensor_hash: str = ""
    metrics: Dict[str, float] = field(default_factory=dict)
    score: Optional[float] = None
    references: Dict[str, Optional[float]] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)
    coefficients: Optional[Any] = None
    selection_metric: Optional[str] = None
    greater_is_better: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
    plot: Optional[Path] = None

    # -- provenance ------------------------------------------------------------------------------------------

    def provenance(self) -> Dict[str, Any]:
        """The `soup.json` content: the pinned recipe plus what was measured and produced."""
        data = self.config.to_dict()
        # Where this machine wrote the soup is not part of the recipe: a rebuild chooses its own output folder.
        data["output"]["dir"] = None
        data["output"]["overwrite"] = False
        data["provenance"] = {
            "hf_soups_version": _version("hf-soups"),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "libraries": {
                name: _version(name)
                for name in ("torch", "transformers", "safetensors", "huggingface_hub", "datasets", "evaluate",
                             "accelerate")
            },
            "python": platform.python_version(),
            "base": {"id": self.lineage.base if self.lineage else None,
                     "revision": self.lineage.base_revision if self.lineage else None},
            "ingredients": [asdict(i) for i in self.ingredients],
            "tensor_hash": self.tensor_hash,
            "selection_metric": self.selection_metric,
            "greater_is_better": self.greater_is_better,
            "metrics": self.metrics,
            "score": self.score,
            "references": self.references,
            "history": self.history,
            "coefficients": self.coefficients,
            "extra": self.extra,
        }
        return data

    def summary_table(self) -> str:
        """A plain-text table: each ingredient (score, weight, accepted), then the soup and references."""
        metric = self.selection_metric or "score"
        rows = [(i.pinned if len(i.pinned) < 60 else i.pinned[:57] + "...", _fmt(i.score), f"{i.weight:.3f}",
                 "yes" if i.accepted else "no") for i in self.ingredients]
        for name, value in self.references.items():
            rows.append((f"[{name.replace('_', ' ')}]", _fmt(value), "", ""))
        rows.append((f"[{self.config.method} soup]", _fmt(self.score), "1.000", ""))
        width = max(len(r[0]) for r in rows + [("ingredient",)])
        lines = [f"{'ingredient':<{width}}  {metric:>10}  weight  accepted", "-" * (width + 30)]
        lines += [f"{a:<{width}}  {b:>10}  {c:>6}  {d}" for a, b, c, d in rows]
        return "\n".join(lines)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "Soup":
        """Rebuild the `Soup` record of a saved soup folder from its `soup.json` (weights are not read)."""
        from .lineage import LineageReport

        folder = Path(folder)
        path = folder / SOUP_FILE
        if not path.exists():
            from .errors import RecipeError

            raise RecipeError(f"{folder} has no {SOUP_FILE}", hint="Point at a folder written by hf-soups.")
        data = json.loads(path.read_text())
        prov = data.pop("provenance", None) or {}
        config = SoupConfig.from_dict(data)
        base = prov.get("base") or {}
        plot = folder / "greedy_trajectory.png"
        return cls(
            folder=folder, config=config,
            ingredients=[IngredientReport(**i) for i in prov.get("ingredients", [])],
            lineage=LineageReport(candidates=list(config.candidates), base=base.get("id"),
                                  base_revision=base.get("revision")),
            tensor_hash=prov.get("tensor_hash", ""), metrics=prov.get("metrics") or {}, score=prov.get("score"),
            references=prov.get("references") or {}, history=prov.get("history") or [],
            coefficients=prov.get("coefficients"), selection_metric=prov.get("selection_metric"),
            greater_is_better=prov.get("greater_is_better", True), extra=prov.get("extra") or {},
            plot=plot if plot.exists() else None,
        )

    # -- output ----------------------------------------------------------------------------------------------

    def card(self):
        """The generated :class:`huggingface_hub.ModelCard` (see :mod:`hf_soups.card`)."""
        from .card import build_card

        return build_card(self)

    def _relocate(self, folder: Path) -> None:
        """Point this soup at `folder` after its files were moved there (the builder's final rename)."""
        self.folder = Path(folder)
        if self.plot is not None:
            self.plot = self.folder / self.plot.name

    def _write_extras(self, folder: Path) -> None:
        (folder / SOUP_FILE).write_text(json.dumps(self.provenance(), indent=2, default=str))
        if self.history and self.plot is None:
            from .card import plot_history

            self.plot = plot_history(self, folder / "greedy_trajectory.png")
        elif self.plot is not None and self.plot.exists() and self.plot.parent != folder:
            shutil.copy2(self.plot, folder / self.plot.name)
        self.card().save(str(folder / "README.md"))

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the soup (weights, config, tokenizer, `soup.json`, model card) to a folder, atomically.

        The folder loads with ``AutoModelFor<Task>.from_pretrained(save_directory)``.

        Raises:
            OutputExistsError: the folder exists and is not empty, and `overwrite` is False; or it is not a previous
                hf-soups output (no `soup.json`), which is never replaced.
        """
        target = Path(save_directory)
        if target.exists() and target.resolve() != self.folder.resolve():
            check_output_dir(target, overwrite)
        if target.resolve() == self.folder.resolve():
            self._write_extras(target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            for item in self.folder.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
            self._write_extras(tmp)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.folder = target
        return target

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
    ) -> str:
        """Create `repo_id` if needed and upload the soup (weights, config, tokenizer, card, `soup.json`) in one
        commit.

        Returns:
            The commit URL.

        Raises:
            PushError: the push failed; nothing was published, the soup stays in `self.folder`.
        """
        from .hub import Hub

        self.config.push_to = repo_id
        self._write_extras(self.folder)
        n = len([i for i in self.ingredients if i.accepted])
        message = commit_message or f"{self.config.method.capitalize()} soup of {n} ingredients (hf-soups)"
        private = self.config.private if private is None else private
        url = Hub(token=token).push_folder(self.folder, repo_id, private=private, commit_message=message)
        logger.info("pushed soup to %s", url)
        return url

    def load_model(self, auto_class: Any = None) -> Any:
        """Load the soup as a `transformers` model (default: the class named in its config's architectures)."""
        from .modeling import load_model

        if auto_class is None:
            return load_model(self.folder, dtype=None)
        if isinstance(auto_class, str):
            import transformers

            auto_class = getattr(transformers, auto_class)
        return auto_class.from_pretrained(str(self.folder))


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _version(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_output_dir(out_dir: Optional[Path], overwrite: bool) -> None:
    """Refuse an output folder that exists and is not empty, unless overwrite; even with overwrite, replace only
    a previous hf-soups output (a recipe is data, maybe from the Hub: it must not be able to delete any folder)."""
    if out_dir is None or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"output {out_dir} exists and is not a folder", hint="Choose another output folder.")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(f"output folder {out_dir} exists and is not empty",
                                hint="Choose another folder or pass overwrite (--overwrite).")
    if not (out_dir / "soup.json").is_file():
        raise OutputExistsError(
            f"output folder {out_dir} is not an hf-soups output (no soup.json): refusing to replace it, even with "
            "overwrite",
            hint="Choose another folder, or delete it yourself.",
        )
