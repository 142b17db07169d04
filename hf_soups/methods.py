"""Soup methods: each a small class registered by name; adding one touches this file only.

A method turns resolved, verified, fetched ingredients into written soup weights:

- ``uniform``: the plain mean;
- ``weighted``: a weighted mean with user weights;
- ``interpolate``: WiSE-FT, ``(1 - a) * base + a * finetuned`` (the mean of the candidates), for each alpha;
  with an evaluation the best alpha is kept;
- ``greedy``: ingredients sorted by held-out score, each kept if the trial soup scores ``>=`` the current one;
- ``learned``: mixing coefficients (per ingredient, or per ingredient per tensor) trained on the held-out split.

Mixing streams through :mod:`hf_soups.mixing` in about one model's memory, except ``learned``, which holds every
ingredient in memory (it warns).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type

import torch

from .candidates import Candidate
from .errors import EvaluationError, RecipeError
from .progress import get_logger, progress
from .recipe import SoupConfig

logger = get_logger(__name__)


@dataclass
class MixContext:
    """What a method works with.

    Attributes:
        candidates: resolved, verified candidates, in the user's order.
        folders: their local folders (weights fetched), same order.
        config: the recipe.
        output_dir: where the soup's weights must be written (does not exist yet).
        evaluator: the held-out evaluator, when the recipe has an evaluation.
        base_folder: the base model's folder, when one was named.
        scores: held-out results of the ingredients, filled by :func:`score_ingredients` (index -> EvalResult).
        live_model: one model reused for every evaluation (weights written in place).
    """

    candidates: List[Candidate]
    folders: List[Path]
    config: SoupConfig
    output_dir: Path
    evaluator: Any = None
    base_folder: Optional[Path] = None
    scores: Dict[int, Any] = field(default_factory=dict)
    live_model: Optional[torch.nn.Module] = None

    def model(self) -> torch.nn.Module:
        """The live model (loaded once from the first ingredient)."""
        if self.live_model is None:
            from .modeling import load_model

            self.live_model = load_model(self.folders[0])
        return self.live_model


@dataclass
class MethodResult:
    """What a method produced.

    Attributes:
        weights: each candidate's weight in the final soup (0 when left out).
        mix: the :class:`~hf_soups.mixing.MixResult` of the written weights.
        score, metrics: the soup's held-out result, when the method measured it.
        history: greedy trials.
        coefficients: learned coefficients.
        extra: other method details (chosen alpha, ...).
    """

    weights: List[float]
    mix: Any
    score: Optional[float] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)
    coefficients: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)


class SoupMethod:
    """Base class of a soup method. Subclasses set `name` and implement :meth:`run`."""

    name: str = ""
    needs_evaluation: bool = False

    def run(self, ctx: MixContext) -> MethodResult:  # pragma: no cover - interface
        raise NotImplementedError


_METHODS: Dict[str, Type[SoupMethod]] = {}


def register_method(cls: Type[SoupMethod]) -> Type[SoupMethod]:
    """Class decorator: make a method available by its `name` in recipes and the CLI."""
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> SoupMethod:
    """An instance of the method registered as `name`.

    Raises:
        RecipeError: no method has that name.
    """
    if name not in _METHODS:
        raise RecipeError(f"unknown method {name!r}", hint=f"Use one of {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]()


def _mix(ctx: MixContext, folders: Sequence[Path], weights: Sequence[float], names: Sequence[str], output: Path):
    from .mixing import mix

    cfg = ctx.config
    return mix(
        folders, weights, output,
        accumulate_dtype=torch.float64 if cfg.accumulate_dtype == "float64" else torch.float32,
        out_dtype=getattr(torch, cfg.output.dtype) if cfg.output.dtype else None,
        max_shard_size=cfg.output.max_shard_size,
        names=list(names),
        copy_files_from=folders[0],
        overwrite=True,
    )


def trial_key(ctx: MixContext, members: Sequence[int]) -> str:
    """Cache key of the uniform soup of `members` (a set of commit shas): same set, same key."""
    shas = sorted(str(ctx.candidates[i].sha) for i in members)
    return "uniform:" + hashlib.sha256("|".join(shas).encode()).hexdigest()[:32]


def score_ingredients(ctx: MixContext) -> Dict[int, Any]:
    """Evaluate every ingredient once (cached by commit sha), writing each into the live model in place."""
    from .modeling import load_folder_into

    if ctx.evaluator is None:
        return {}
    model = ctx.model()
    for i, (cand, folder) in enumerate(zip(ctx.candidates, ctx.folders)):
        if i in ctx.scores:
            continue
        load_folder_into(model, folder)
        ctx.scores[i] = ctx.evaluator.evaluate(model, key=f"ingredient:{cand.sha}", desc=f"Evaluating {cand.name}")
    return ctx.scores


def _better(score: Optional[float], bar: float, *, greater: bool, strict: bool) -> bool:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return False
    if greater:
        return score > bar if strict else score >= bar
    return score < bar if strict else score <= bar


@register_method
class Uniform(SoupMethod):
    """The plain mean of every ingredient."""

    name = "uniform"

    def run(self, ctx: MixContext) -> MethodResult:
        n = len(ctx.folders)
        w = [1.0 / n] * n
        return MethodResult(weights=w, mix=_mix(ctx, ctx.folders, w, [c.ref for c in ctx.candidates], ctx.output_dir))


@register_method
class Weighted(SoupMethod):
    """A weighted mean with the recipe's `weights` (validated and normalised by the recipe)."""

    name = "weighted"

    def run(self, ctx: MixContext) -> MethodResult:
        w = list(ctx.config.weights or [])
        return MethodResult(weights=w, mix=_mix(ctx, ctx.folders, w, [c.ref for c in ctx.candidates], ctx.output_dir))


@register_method
class Interpolate(SoupMethod):
    """WiSE-FT: ``(1 - a) * base + a * finetuned`` for each alpha; the best alpha on held-out data is kept.

    With several candidates, `finetuned` is their uniform soup. Tensors the base lacks (a new head) come from
    the fine-tune unchanged.
    """

    name = "interpolate"

    def run(self, ctx: MixContext) -> MethodResult:
        from .mixing import interpolate
        from .modeling import load_model

        if ctx.base_folder is None:
            raise RecipeError("method 'interpolate' needs `base`", hint="Add base: org/base-model@<sha>.")
        alphas = ctx.config.alphas or [0.5]
        tmp_root = ctx.output_dir.parent / f".{ctx.output_dir.name}.interp"
        finetuned = ctx.folders[0]
        if len(ctx.folders) > 1:
            n = len(ctx.folders)
            finetuned = _mix(ctx, ctx.folders, [1.0 / n] * n, [c.ref for c in ctx.candidates],
                             tmp_root / "finetuned").output_dir
        results: Dict[float, Any] = {}
        best_alpha, best = alphas[0], None
        try:
            for a in alphas:
                out = ctx.output_dir if len(alphas) == 1 else tmp_root / f"alpha-{a}"
                interpolate(ctx.base_folder, finetuned, a, out, overwrite=True)
                if ctx.evaluator is not None:
                    res = ctx.evaluator.evaluate(load_model(out), key=None, desc=f"Evaluating alpha={a}")
                    results[a] = res
                    if best is None or _better(res.score, best.score, greater=ctx.evaluator.greater_is_better,
                                               strict=True):
                        best_alpha, best = a, res
            if len(alphas) > 1:
                import shutil

                (tmp_root / f"alpha-{best_alpha}").rename(ctx.output_dir)
        finally:
            import shutil

            shutil.rmtree(tmp_root, ignore_errors=True)
        from .mixing import tensor_hash

        n = len(ctx.folders)
        mix_result = _FolderResult(ctx.output_dir, tensor_hash(ctx.output_dir))
        return MethodResult(
            weights=[best_alpha / n] * n,
            mix=mix_result,
            score=best.score if best else None,
            metrics=dict(best.metrics) if best else {},
            extra={"alpha": best_alpha, "base_weight": 1 - best_alpha,
                   "alphas": {str(a): (r.score if r else None) for a, r in results.items()} or alphas},
        )


@dataclass
class _FolderResult:
    """A minimal stand-in for MixResult when weights were written by another routine."""

    output_dir: Path
    tensor_hash: str
    warnings: List[str] = field(default_factory=list)


@register_method
class Greedy(SoupMethod):
    """Greedy soup (Wortsman et al., 2022, recipe 2).

    Sort ingredients by held-out score (ties: candidate order), start from the best, and try each next one: keep
    it if the uniform soup of (accepted + it) scores ``>=`` the current soup (``>`` with `strict`, plus
    `min_delta`). A float32 running sum of the accepted set is kept and each trial's weights are written into one
    live model in place. With `early_rejection`, a trial stops as soon as it can no longer reach the bar (exact).
    """

    name = "greedy"
    needs_evaluation = True

    def run(self, ctx: MixContext) -> MethodResult:
        from .mixing import RunningSum

        ev = ctx.evaluator
        if ev is None:
            raise EvaluationError("greedy soup needs an evaluation dataset", hint="Pass eval_dataset=...")
        rule = ctx.config.greedy
        scores = score_ingredients(ctx)
        greater = ev.greater_is_better
        order = sorted(range(len(ctx.folders)),
                       key=lambda i: ((-scores[i].score if greater else scores[i].score), i))
        model = ctx.model()
        first = order[0]
        running = RunningSum(ctx.folders[first])
        running.add(ctx.folders[first])
        accepted = [first]
        current = scores[first].score
        history = [dict(step=0, ingredient=ctx.candidates[first].name, candidate=ctx.candidates[first].pinned_ref,
                        score=current, accepted=True, n_evaluated=scores[first].n_evaluated, stopped_early=False,
                        bar=None)]
        for step, i in enumerate(order[1:], start=1):
            bar = current + rule.min_delta if greater else current - rule.min_delta
            running.trial_into(model, ctx.folders[i])
            res = ev.evaluate(
                model,
                key=trial_key(ctx, accepted + [i]),
                bar=bar if rule.early_rejection else None,
                strict=rule.strict,
                desc=f"Greedy trial {step}/{len(order) - 1}: + {ctx.candidates[i].name}",
            )
            ok = _better(res.score, bar, greater=greater, strict=rule.strict)
            history.append(dict(step=step, ingredient=ctx.candidates[i].name, candidate=ctx.candidates[i].pinned_ref,
                                score=res.score, accepted=ok, n_evaluated=res.n_evaluated,
                                stopped_early=bool(res.stopped_early), bar=bar))
            logger.info("greedy trial +%s: %s (bar %s) -> %s", ctx.candidates[i].name, res.score, bar,
                        "kept" if ok else "dropped")
            if ok:
                running.add(ctx.folders[i])
                accepted.append(i)
                current = res.score
                final_metrics = dict(res.metrics)
        if len(accepted) == 1:
            final_metrics = dict(scores[first].metrics)
        k = len(accepted)
        weights = [1.0 / k if i in accepted else 0.0 for i in range(len(ctx.folders))]
        members = sorted(accepted)
        mix_result = _mix(ctx, [ctx.folders[i] for i in members], [1.0 / k] * k,
                          [ctx.candidates[i].ref for i in members], ctx.output_dir)
        n_full = scores[first].n_examples
        saved = sum(n_full - h["n_evaluated"] for h in history[1:] if h["n_evaluated"] is not None)
        return MethodResult(
            weights=weights, mix=mix_result, score=current, metrics=final_metrics, history=history,
            extra={"rule": (">" if rule.strict else ">=") + (f" +{rule.min_delta}" if rule.min_delta else ""),
                   "order": [ctx.candidates[i].name for i in order],
                   "examples_saved_by_early_rejection": saved,
                   "examples_per_full_evaluation": n_full},
        )


@register_method
class Learned(SoupMethod):
    """Learned soup: mixing coefficients trained by gradient descent on the held-out split.

    Coefficients are a softmax over ingredients (one set for the model, or one per tensor with
    ``granularity: layer``), initialised uniform and trained with Adam through `torch.func.functional_call`.
    Holds every ingredient in memory at once.
    """

    name = "learned"
    needs_evaluation = True

    def run(self, ctx: MixContext) -> MethodResult:
        from safetensors.torch import load_file
        from torch.func import functional_call

        from .mixing import RunningSum  # noqa: F401  (import check: mixing available)
        from .writer import write_state_dict

        ev = ctx.evaluator
        if ev is None:
            raise EvaluationError("learned soup needs an evaluation dataset", hint="Pass eval_dataset=...")
        warnings.warn(
            f"learned soup holds all {len(ctx.folders)} ingredients in memory at once "
            "(use greedy for a soup in the memory of one model)",
            stacklevel=2,
        )
        cfg = ctx.config.learned
        scores = score_ingredients(ctx)
        model = ctx.model()
        states = [_load_state(folder, load_file) for folder in ctx.folders]
        model_state = model.state_dict()
        names = [k for k in sorted(states[0]) if k in model_state and states[0][k].is_floating_point()
                 and all(k in s for s in states)]
        n = len(states)
        rows = len(names) if cfg.granularity == "layer" else 1
        logits = torch.zeros(rows, n, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=cfg.lr)
        stacked = {k: torch.stack([s[k].float() for s in states]) for k in names}
        buffers = {k: v for k, v in model_state.items() if k not in stacked}
        model.train(False)
        batches = ev.training_batches(batch_size=cfg.batch_size, seed=ev.settings.seed)
        losses = []
        for step in progress(range(cfg.steps), desc="Learning soup coefficients", unit="step"):
            batch = next(batches)
            w = torch.softmax(logits, dim=1)
            params = {k: torch.tensordot(w[j if rows > 1 else 0], stacked[k], dims=1) for j, k in enumerate(names)}
            out = functional_call(model, {**buffers, **params}, args=(), kwargs=batch)
            loss = out.loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        with torch.no_grad():
            w = torch.softmax(logits, dim=1)
            final = {k: torch.tensordot(w[j if rows > 1 else 0], stacked[k], dims=1) for j, k in enumerate(names)}
            dtype = states[0][names[0]].dtype
            merged = {k: v.to(dtype) for k, v in final.items()}
            for k in states[0]:
                if k not in merged:
                    merged[k] = states[0][k]
        del stacked, states
        from .modeling import copy_state_into

        copy_state_into(model, {k: v for k, v in final.items()})
        res = ev.evaluate(model, key=None, desc="Evaluating learned soup")
        write_state_dict(merged, ctx.output_dir, max_shard_size=ctx.config.output.max_shard_size)
        _copy_side_files(ctx.folders[0], ctx.output_dir)
        from .mixing import tensor_hash

        mean_w = w.mean(dim=0).tolist()
        coefficients: Any = (
            {"per_ingredient": [round(x, 6) for x in mean_w]}
            if rows == 1
            else {"per_ingredient_mean": [round(x, 6) for x in mean_w],
                  "per_tensor": {k: [round(x, 6) for x in w[j].tolist()] for j, k in enumerate(names)}}
        )
        return MethodResult(
            weights=mean_w,
            mix=_FolderResult(ctx.output_dir, tensor_hash(ctx.output_dir)),
            score=res.score,
            metrics=dict(res.metrics),
            coefficients=coefficients,
            extra={"granularity": cfg.granularity, "steps": cfg.steps, "lr": cfg.lr,
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None},
        )


def _load_state(folder: Path, load_file: Any) -> Dict[str, torch.Tensor]:
    import json

    index = folder / "model.safetensors.index.json"
    if index.exists():
        state: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    return load_file(str(folder / "model.safetensors"))


def _copy_side_files(src: Path, dst: Path) -> None:
    """Copy config, tokenizer and generation config (not weights, card or soup.json) next to written weights."""
    import shutil

    for item in src.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name not in (
            "model.safetensors.index.json", "README.md", "soup.json"
        ) and not item.name.endswith((".bin", ".pt", ".pth")):
            shutil.copy2(item, dst / item.name)
