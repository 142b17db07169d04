"""The recipe schema: one set of dataclasses for a YAML recipe and for the `soup.json` a soup carries.

A recipe holds a whole soup (candidates, method, evaluation, output, push target). The `soup.json` of a built
soup is the same recipe with every candidate pinned to its commit sha, plus a `provenance` section (what was
measured and produced). So ``hf-soups build soup.json`` rebuilds a published soup.

Example:
    >>> cfg = SoupConfig(candidates=["org/a", "org/b"], method="uniform")
    >>> SoupConfig.from_yaml(cfg.to_yaml()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import EvaluationError, RecipeError

T = TypeVar("T")

#: Methods a recipe may name (see :mod:`hf_soups.methods`).
METHOD_NAMES = ("uniform", "weighted", "greedy", "learned", "interpolate")
#: File suffixes that mark `evaluation.dataset` as a local file.
_DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet", ".txt", ".arrow")


@dataclass
class EvaluationConfig:
    """Held-out evaluation: which data, which metric, how.

    Attributes:
        dataset: a dataset name on the Hub (``stanfordnlp/sst2``), a builder (``csv``) with `data_files`, or
            a local file/folder.
        config: the dataset configuration name.
        split: the held-out split greedy and learned soups select on.
        data_files: files for a builder dataset (``csv``, ``json``, ``parquet``).
        metric: one or more `evaluate` ids or paths to metric modules.
        selection_metric: the metric that drives selection (default: the first one).
        greater_is_better: direction of `selection_metric` (default: inferred: loss/perplexity lower).
        task: task adapter name (default: inferred from the model config).
        columns: column mapping, e.g. ``{"text": "sentence", "label": "label"}``.
        max_samples: evaluate on a random subset of this size (seeded by `seed`).
        seed: seed of the subset.
        batch_size: evaluation batch size.
        max_length: truncation length for text.
        dataset_kwargs: extra keyword arguments for `datasets.load_dataset` (e.g. ``delimiter``).
    """

    dataset: Optional[str] = None
    config: Optional[str] = None
    split: str = "validation"
    data_files: Optional[Any] = None
    metric: List[str] = field(default_factory=lambda: ["accuracy"])
    selection_metric: Optional[str] = None
    greater_is_better: Optional[bool] = None
    task: Optional[str] = None
    columns: Dict[str, Optional[str]] = field(default_factory=dict)
    max_samples: Optional[int] = None
    seed: int = 0
    batch_size: int = 32
    max_length: int = 128
    dataset_kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GreedyConfig:
    """Greedy soup rule: add an ingredient when the trial scores `>=` the current soup (+ `min_delta`).

    Attributes:
        strict: demand strictly better (`>`), as the paper's reference code does, instead of "not worse".
        min_delta: the trial must beat the current score by at least this much.
        early_rejection: stop evaluating a trial as soon as it can no longer reach the bar (exact; mean
            metrics such as accuracy only). The examples the trial most likely gets wrong, predicted from the
            outputs of the current soup and the new ingredient, are evaluated first, so that a failing trial
            stops sooner; the order never changes a decision.
    """

    strict: bool = False
    min_delta: float = 0.0
    early_rejection: bool = True


@dataclass
class LearnedConfig:
    """Learned soup: mixing coefficients trained by gradient descent on the held-out split.

    Attributes:
        granularity: ``"model"`` (one coefficient per ingredient) or ``"layer"`` (per ingredient per tensor).
        steps: optimisation steps (Adam).
        lr: learning rate.
        batch_size: examples per step.
    """

    granularity: str = "model"
    steps: int = 50
    lr: float = 0.05
    batch_size: int = 32


@dataclass
class OutputConfig:
    """Where and how the soup's weights are written.

    Attributes:
        dir: output folder (written atomically); None keeps the soup in a temporary folder until saved.
        dtype: output dtype (``float32``, ``bfloat16``, ``float16``); default: the ingredients'.
        max_shard_size: largest weight file, as in `save_pretrained` (``"5GB"``).
        overwrite: replace a non-empty output folder.
    """

    dir: Optional[str] = None
    dtype: Optional[str] = None
    max_shard_size: str = "5GB"
    overwrite: bool = False


@dataclass
class SoupConfig:
    """A whole soup: the recipe schema, and the schema of `soup.json`.

    Attributes:
        candidates: references (``org/model@rev`` or folders).
        method: ``uniform``, ``weighted``, ``greedy``, ``learned`` or ``interpolate``.
        base: the base model every candidate must come from (``id@rev`` or folder); needed by ``interpolate``.
        weights: per-candidate weights for ``weighted``.
        normalize: rescale `weights` to sum to one; off by default, so weights that do not sum to one are an
            error rather than silently rescaled.
        alphas: interpolation factors for ``interpolate`` (WiSE-FT: ``(1-a)*base + a*finetuned``).
        greedy, learned: method settings.
        evaluation: held-out evaluation (required by greedy and learned, optional otherwise).
        output: where the weights go.
        push_to: a Hub repo id to publish the soup to.
        private: create the pushed repo as private.
        allow_pickle: accept pickle-only candidates (unsafe).
        check_weights: run the weight-space lineage checks (distance to base, head initialisation).
        compare: also score the logit ensemble of the ingredients as a reference.
        accumulate_dtype: ``float32`` or ``float64`` accumulation.
        provenance: filled in `soup.json` (what was measured and produced); ignored when building.
    """

    candidates: List[str] = field(default_factory=list)
    method: str = "uniform"
    base: Optional[str] = None
    weights: Optional[List[float]] = None
    normalize: bool = False
    alphas: Optional[List[float]] = None
    greedy: GreedyConfig = field(default_factory=GreedyConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    evaluation: Optional[EvaluationConfig] = None
    output: OutputConfig = field(default_factory=OutputConfig)
    push_to: Optional[str] = None
    private: bool = False
    allow_pickle: bool = False
    check_weights: bool = True
    compare: bool = False
    accumulate_dtype: str = "float32"
    provenance: Optional[Dict[str, Any]] = None

    # -- validation ------------------------------------------------------------------------------------------

    def validate(self) -> "SoupConfig":
        """Check values a type cannot express; raise :class:`RecipeError` naming the field and the fix.

        A candidate named twice is used once (with a warning), unless per-candidate `weights` make that ambiguous.

        Raises:
            RecipeError: a value is invalid (the message names the field and the fix).
            InvalidReferenceError: a candidate, the base or the push target is not a valid reference / repo id.
            EvaluationError: the held-out dataset is a local file that does not exist.
        """
        self._drop_repeated_candidates()
        if self.method not in METHOD_NAMES:
            close = difflib.get_close_matches(self.method, METHOD_NAMES, n=1)
            raise RecipeError(
                f"unknown method {self.method!r}",
                hint=f"Use one of {', '.join(METHOD_NAMES)}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            )
        minimum = 1 if self.method == "interpolate" else 2
        if len(self.candidates) < minimum:
            raise RecipeError(
                f"method {self.method!r} needs at least {minimum} candidates, got {len(self.candidates)}",
                hint="Name more candidates (a soup averages several fine-tunes of one base).",
            )
        if self.method == "weighted":
            self.weights = validate_weights(self.weights, len(self.candidates), normalize=self.normalize)
        elif self.weights is not None:
            raise RecipeError(f"`weights` is only used by method 'weighted', not {self.method!r}",
                              hint="Remove `weights`, or use method: weighted.")
        if self.method == "interpolate":
            if not self.base:
                raise RecipeError("method 'interpolate' needs `base` (the pre-trained model, ID@REV or folder)",
                                  hint="Add base: org/base-model@<sha>.")
            alphas = self.alphas or [0.5]
            bad = [a for a in alphas if not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0)]
            if bad:
                raise RecipeError(f"alphas must be in [0, 1], got {bad}", hint="Use e.g. alphas: [0.25, 0.5, 0.75].")
            if len(alphas) > 1 and self.evaluation is None:
                raise RecipeError("several alphas need an evaluation to choose between them",
                                  hint="Add an `evaluation:` section, or give a single alpha.")
            self.alphas = [float(a) for a in alphas]
        if self.method in ("greedy", "learned") and (self.evaluation is None or not self.evaluation.dataset):
            raise RecipeError(f"method {self.method!r} needs a held-out evaluation dataset",
                              hint="Add evaluation: {dataset: ..., split: validation, metric: accuracy}.")
        if self.learned.granularity not in ("model", "layer"):
            raise RecipeError(f"learned.granularity must be 'model' or 'layer', got {self.learned.granularity!r}",
                              hint="Use granularity: model (one coefficient per ingredient) or layer.")
        if self.accumulate_dtype not in ("float32", "float64"):
            raise RecipeError(f"accumulate_dtype must be float32 or float64, got {self.accumulate_dtype!r}",
                              hint="Use accumulate_dtype: float32 (default) or float64.")
        from .candidates import parse_reference, validate_repo_id

        for ref in self.candidates + ([self.base] if self.base else []):
            parse_reference(ref)  # a malformed reference fails now, before any download
        if self.push_to is not None:
            validate_repo_id(self.push_to, what="repo id for push_to (the Hub repo to publish to)")
        self._check_dataset_path()
        return self

    def _drop_repeated_candidates(self) -> None:
        """Use a candidate named twice once (with a warning); with per-candidate weights it is an error."""
        seen: List[str] = []
        for ref in self.candidates:
            if ref not in seen:
                seen.append(ref)
        if len(seen) == len(self.candidates):
            return
        repeated = sorted({c for c in self.candidates if self.candidates.count(c) > 1})
        if self.weights is not None:
            raise RecipeError(
                f"{', '.join(repeated)} is named twice, so which weight applies is ambiguous",
                hint="Name each candidate once, with one weight each.",
            )
        warnings.warn(f"{', '.join(repeated)} is named twice; it is used once.", UserWarning, stacklevel=3)
        self.candidates = seen

    def _check_dataset_path(self) -> None:
        """A held-out dataset given as a local file must exist (checked before anything is downloaded)."""
        name = self.evaluation.dataset if self.evaluation is not None else None
        if not name or not isinstance(name, str):
            return
        looks_local = name.startswith((".", "/", "~")) or Path(name).suffix.lower() in _DATA_SUFFIXES
        if looks_local and not Path(name).expanduser().exists():
            raise EvaluationError(
                f"dataset file {name} not found (relative to {Path.cwd()})",
                hint="Check the path of evaluation.dataset (--eval-dataset), or name a Hub dataset (org/name).",
            )

    # -- (de)serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """A plain dict (the JSON / YAML form)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SoupConfig":
        """Build from a dict; unknown keys raise :class:`RecipeError` naming the closest valid key."""
        return _from_dict(cls, data, path="")

    def to_yaml(self) -> str:
        """The recipe as YAML (the `provenance` section is left out when empty)."""
        data = self.to_dict()
        if data.get("provenance") is None:
            data.pop("provenance")
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "SoupConfig":
        """Parse a YAML (or JSON) recipe."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"the recipe is not valid YAML: {err}",
                              hint="Fix the line shown (indentation, brackets, quotes); start from recipes/.") from err
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a mapping of keys to values",
                              hint="Start from an example in recipes/.")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SoupConfig":
        """Read a recipe (`.yaml`, `.yml`) or a `soup.json`."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe {path} does not exist", hint="Check the path.")
        return cls.from_yaml(path.read_text())

    def save(self, path: Union[str, Path]) -> None:
        """Write as JSON (`.json`) or YAML (anything else)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else self.to_yaml()
        path.write_text(text)


def validate_weights(weights: Optional[List[float]], n: int, *, normalize: bool = False) -> List[float]:
    """Check per-candidate weights and return them (rescaled to sum to one when `normalize` is True).

    Example:
        >>> validate_weights([1, 3], 2, normalize=True)
        [0.25, 0.75]

    Raises:
        RecipeError: wrong count, NaN, negative, all zero, or (without normalisation) not summing to one.
    """
    if weights is None:
        raise RecipeError("method 'weighted' needs `weights`, one per candidate", hint="e.g. weights: [0.5, 0.3, 0.2]")
    if len(weights) != n:
        raise RecipeError(f"{len(weights)} weights for {n} candidates", hint="Give exactly one weight per candidate.")
    for i, w in enumerate(weights):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise RecipeError(f"weight #{i + 1} is {w!r}, not a finite number", hint="Use finite numbers >= 0.")
        if w < 0:
            raise RecipeError(f"weight #{i + 1} is negative ({w})", hint="Weights of a soup are >= 0.")
    total = float(sum(weights))
    if total <= 0:
        raise RecipeError("the weights sum to zero", hint="Give at least one positive weight.")
    if normalize:
        return [float(w) / total for w in weights]
    if abs(total - 1.0) > 1e-6:
        raise RecipeError(f"the weights sum to {total:.6g}, not 1 (normalize is off)",
                          hint="Make them sum to one, or ask for rescaling (normalize: true in a recipe, "
                               "normalize=True in Python).")
    return [float(w) for w in weights]


def _from_dict(cls: Type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        raise RecipeError(f"`{path or 'recipe'}` must be a mapping, got {type(data).__name__}",
                          hint=f"Write `{path or 'recipe'}` as key: value pairs; valid keys: "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}.")  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        where = f"{path}.{key}" if path else str(key)
        raise RecipeError(
            f"unknown key `{where}`" + (f" (did you mean `{close[0]}`?)" if close else ""),
            hint=f"Valid keys{' of ' + path if path else ''}: {', '.join(names)}.",
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{path}.{key}" if path else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin in (list, List):
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"`{path}` must be a list, got {type(value).__name__}", hint=f"Write {path}: [a, b].")
        return list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise RecipeError(f"`{path}` must be a mapping, got {type(value).__name__}",
                          hint=f"Write {path}: {{key: value}}.")
        return dict(value)
    if tp is bool and not isinstance(value, bool):
        raise RecipeError(f"`{path}` must be true or false, got {value!r}",
                          hint=f"Write {path}: true or {path}: false (no quotes).")
    if tp in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RecipeError(f"`{path}` must be a number, got {value!r}", hint=f"Write {path} as a number, e.g. 32.")
    if tp is str and not isinstance(value, str):
        raise RecipeError(f"`{path}` must be a string, got {value!r}", hint=f"Quote it: {path}: \"{value}\".")
    return float(value) if tp is float else value
