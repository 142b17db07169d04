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

import numpy as np
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
    """Write a weighted mean with :func:`hf_soups.mixing.mix`, once (on the main process when distributed)."""
    from .mixing import mix

    cfg = ctx.config

    def write() -> Any:
        return mix(
            folders, weights, output,
            accumulate_dtype=torch.float64 if cfg.accumulate_dtype == "float64" else torch.float32,
            out_dtype=getattr(torch, cfg.output.dtype) if cfg.output.dtype else None,
            max_shard_size=cfg.output.max_shard_size,
            names=list(names),
            copy_files_from=folders[0],
            overwrite=True,
        )

    return _once(ctx, write)


def _once(ctx: MixContext, fn: Any) -> Any:
    """Run `fn` once: on the main process (result broadcast to the others) when an evaluator runs distributed."""
    ev = ctx.evaluator
    if ev is None or not hasattr(ev, "on_main_process"):
        return fn()
    return ev.on_main_process(fn)


def _accumulate_dtype(ctx: MixContext) -> torch.dtype:
    return torch.float64 if ctx.config.accumulate_dtype == "float64" else torch.float32


def trial_key(ctx: MixContext, members: Sequence[int]) -> str:
    """Cache key of the running-sum average of `members`, summed in this order (then the last one tried).

    The order is part of the key because float accumulation depends on it (the same set summed in another order
    may differ in the last bit); so is the accumulation dtype.
    """
    shas = [str(ctx.candidates[i].sha) for i in members]
    text = "|".join(shas) + f"|{ctx.config.accumulate_dtype}"
    return "running-average:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def score_ingredients(ctx: MixContext) -> Dict[int, Any]:
    """Evaluate every ingredient once (cached by commit sha), writing each into the live model in place.

    Args:
        ctx: the mixing context; results are stored in ``ctx.scores`` (index -> EvalResult) and reused.

    Returns:
        ``ctx.scores`` (empty when there is no evaluator).
    """
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


def logit_ensemble(ctx: MixContext) -> Dict[str, Any]:
    """Metrics of the logit ensemble of the ingredients (mean logits): the reference a soup is compared with.

    An ensemble costs one forward pass per ingredient at inference; a soup costs one. Each ingredient is written
    into the live model in place and its logits predicted on the held-out split.

    Returns:
        The ensemble's metrics (the evaluator's metrics of the mean logits).

    Raises:
        EvaluationError: no evaluator, or a task without per-example logits (causal LM).
    """
    from .modeling import load_folder_into

    ev = ctx.evaluator
    if ev is None:
        raise EvaluationError("the logit ensemble needs an evaluation dataset", hint="Pass eval_dataset=...")
    model = ctx.model()
    total: Optional[torch.Tensor] = None
    for cand, folder in zip(ctx.candidates, ctx.folders):
        load_folder_into(model, folder)
        logits = ev.predict_logits(model, desc=f"Logits of {cand.name}").double()
        total = logits if total is None else total + logits
    assert total is not None
    return ev.score_logits(total / len(ctx.folders))


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
        from .mixing import interpolate, tensor_hash
        from .modeling import load_folder_into

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
                _once(ctx, lambda out=out, a=a: interpolate(ctx.base_folder, finetuned, a, out, overwrite=True))
                if ctx.evaluator is not None:
                    model = ctx.model()
                    load_folder_into(model, out)
                    res = ctx.evaluator.evaluate(model, key=f"soup:{tensor_hash(out)}", desc=f"Evaluating alpha={a}")
                    results[a] = res
                    if best is None or res.meets(best.score, strict=True):
                        best_alpha, best = a, res
            if len(alphas) > 1:
                _once(ctx, lambda: (tmp_root / f"alpha-{best_alpha}").rename(ctx.output_dir))
        finally:
            import shutil

            _once(ctx, lambda: shutil.rmtree(tmp_root, ignore_errors=True))

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

    1. Score every ingredient on the held-out split (cached by commit sha); sort them best first, ties broken by
       candidate order (the ties are recorded in ``extra["ties"]``).
    2. Start from the best one. For each next one, write the average of (accepted + it) into the live model, in
       place, from a float32 running sum of the accepted set (one read of the candidate, never a model load),
       and evaluate it.
    3. Keep it if the trial's score reaches the bar: ``>=`` the current score (``>`` with ``strict``), shifted by
       ``min_delta`` in the good direction.

    With ``early_rejection`` (the default) a trial of a mean metric (accuracy, causal-LM loss) stops as soon as
    even a perfect rest of the split could not reach the bar; the decisions are exactly those of full
    evaluations, and ``extra["examples_saved_by_early_rejection"]`` says how many examples were not evaluated.

    Every trial is in ``history``: step, ingredient, candidate, score (None when stopped early), bound, bar,
    accepted, examples evaluated, stopped early, cached, soup size after the step.
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
        bad = [ctx.candidates[i].name for i, r in scores.items() if r.score is None or math.isnan(r.score)]
        if bad:
            raise EvaluationError(f"no held-out score for {bad}: greedy soup cannot rank them", candidate=bad[0])
        order = sorted(range(len(ctx.folders)), key=lambda i: ((-scores[i].score if greater else scores[i].score), i))
        ties: List[List[str]] = []
        for i in order:
            same = [ctx.candidates[j].name for j in order if scores[j].score == scores[i].score]
            if len(same) > 1 and same not in ties:
                ties.append(same)
        model = ctx.model()
        first = order[0]
        running = RunningSum(ctx.folders[first], accumulate_dtype=_accumulate_dtype(ctx))
        running.add(ctx.folders[first], name=ctx.candidates[first].name)
        accepted = [first]
        current, final_metrics = scores[first].score, dict(scores[first].metrics)
        current_quality = scores[first].example_quality
        n_full = scores[first].n_examples
        history = [dict(step=0, ingredient=ctx.candidates[first].name, candidate=ctx.candidates[first].pinned_ref,
                        index=first, score=current, bound=None, bar=None, accepted=True, n_evaluated=n_full,
                        n_examples=n_full, stopped_early=False, cached=bool(scores[first].cached), soup_size=1)]
        for step, i in enumerate(order[1:], start=1):
            cand = ctx.candidates[i]
            bar = current + rule.min_delta if greater else current - rule.min_delta
            running.trial_into(model, ctx.folders[i], name=cand.name)
            res = ev.evaluate(
                model,
                key=trial_key(ctx, accepted + [i]),
                bar=bar if rule.early_rejection else None,
                strict=rule.strict,
                desc=f"Greedy trial {step}/{len(order) - 1}: + {cand.name}",
                priority=_trial_priority(current_quality, scores[i].example_quality, len(accepted)),
            )
            ok = res.meets(bar, strict=rule.strict)
            if ok:
                running.add(ctx.folders[i], name=cand.name)
                accepted.append(i)
                current, final_metrics = res.score, dict(res.metrics)
                current_quality = res.example_quality
            history.append(dict(step=step, ingredient=cand.name, candidate=cand.pinned_ref, index=i, score=res.score,
                                bound=res.bound, bar=bar, accepted=ok, n_evaluated=res.n_evaluated,
                                n_examples=res.n_examples, stopped_early=bool(res.stopped_early),
                                cached=bool(res.cached), soup_size=len(accepted)))
            logger.info("greedy trial %d +%s: %s (bar %s %s) -> %s", step, cand.name,
                        res.score if res.score is not None else f"stopped after {res.n_evaluated}/{res.n_examples}",
                        ">" if rule.strict else ">=", bar, "kept" if ok else "dropped")
        k = len(accepted)
        weights = [1.0 / k if i in accepted else 0.0 for i in range(len(ctx.folders))]
        members = sorted(accepted)
        mix_result = _mix(ctx, [ctx.folders[i] for i in members], [1.0 / k] * k,
                          [ctx.candidates[i].ref for i in members], ctx.output_dir)
        trials = history[1:]
        evaluated = sum(h["n_evaluated"] for h in trials if not h["cached"])
        saved = sum(h["n_examples"] - h["n_evaluated"] for h in trials)
        return MethodResult(
            weights=weights, mix=mix_result, score=current, metrics=final_metrics, history=history,
            extra={"rule": (">" if rule.strict else ">=") + (f" +{rule.min_delta}" if rule.min_delta else ""),
                   "order": [ctx.candidates[i].name for i in order],
                   "ties": ties,
                   "accepted": [ctx.candidates[i].name for i in accepted],
                   "early_rejection": rule.early_rejection,
                   "examples_saved_by_early_rejection": saved,
                   "examples_evaluated_in_trials": evaluated,
                   "examples_per_full_evaluation": n_full},
        )


def _trial_priority(soup: Optional[np.ndarray], ingredient: Optional[np.ndarray], k: int) -> Optional[np.ndarray]:
    """Where a greedy trial (k accepted + 1 new) most likely fails, for early rejection: hardest examples first.

    Averaging the weights of fine-tunes of one base behaves much like averaging their outputs (that is why soups
    work), so the trial's per-example quality is predicted as the k:1 average of the current soup's and the new
    ingredient's. A poor prediction costs only speed: decisions do not depend on the order.
    """
    if soup is None and ingredient is None:
        return None
    if soup is None or ingredient is None:
        return -(soup if soup is not None else ingredient)  # type: ignore[operator]
    return -(k * soup + ingredient) / (k + 1)


@register_method
class Learned(SoupMethod):
    """Learned soup: mixing coefficients trained by gradient descent on the held-out split.

    The coefficients are a softmax over ingredients (so they are positive and sum to 1), one set for the whole
    model (``granularity: model``) or one set per weight tensor (``granularity: layer``, the paper's "per-layer"
    soup), initialised uniform and trained with Adam through ``torch.func.functional_call`` on shuffled batches
    of the held-out split (``model(**batch).loss``). They are saved in ``soup.json``.

    Warning: it holds every ingredient in memory at once (in float32), ``n`` times the model; greedy and
    uniform soups need about one model.
    """

    name = "learned"
    needs_evaluation = True

    def run(self, ctx: MixContext) -> MethodResult:
        from safetensors.torch import load_file
        from torch.func import functional_call

        from .mixing import _copy_side_files as copy_side_files
        from .mixing import tensor_hash
        from .modeling import copy_state_into
        from .writer import write_state_dict

        ev = ctx.evaluator
        if ev is None:
            raise EvaluationError("learned soup needs an evaluation dataset", hint="Pass eval_dataset=...")
        cfg = ctx.config.learned
        n = len(ctx.folders)
        message = (f"learned soup holds all {n} ingredients in memory at once ({n}x the model in float32); "
                   "greedy or uniform soups need about one model")
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
        score_ingredients(ctx)
        model = ctx.model()
        device = next(model.parameters()).device
        states = [_load_state(folder, load_file) for folder in ctx.folders]
        model_state = model.state_dict()
        names = [k for k in sorted(states[0]) if k in model_state and states[0][k].is_floating_point()
                 and all(k in s for s in states)]
        rows = len(names) if cfg.granularity == "layer" else 1
        stacked = {k: torch.stack([s[k].float() for s in states]).to(device) for k in names}

        def mixed(w: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {k: torch.tensordot(w[j if rows > 1 else 0], stacked[k], dims=1) for j, k in enumerate(names)}

        def mean_loss(w: torch.Tensor) -> float:
            with torch.no_grad():
                losses = [float(functional_call(model, mixed(w), args=(), kwargs=b).loss)
                          for b in ev.training_batches(cfg.batch_size, seed=ev.settings.seed, epochs=1)]
            return sum(losses) / len(losses)

        logits = torch.zeros(rows, n, device=device, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=cfg.lr)
        was_training = model.training
        model.eval()  # no dropout: the loss is that of the soup the evaluation will see
        try:
            loss_uniform = mean_loss(torch.softmax(logits.detach(), dim=1))
            batches = ev.training_batches(cfg.batch_size, seed=ev.settings.seed)
            losses: List[float] = []
            for _ in progress(range(cfg.steps), desc="Learning soup coefficients", unit="step"):
                loss = functional_call(model, mixed(torch.softmax(logits, dim=1)), args=(), kwargs=next(batches)).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            w = torch.softmax(logits.detach(), dim=1)
            loss_learned = mean_loss(w)
        finally:
            model.train(was_training)
        out_dtype = getattr(torch, ctx.config.output.dtype) if ctx.config.output.dtype else None
        with torch.no_grad():
            final = mixed(w)
            merged = {k: final[k].cpu().to(out_dtype or states[0][k].dtype) for k in names}
            for k in states[0]:
                if k not in merged:
                    merged[k] = states[0][k]
        del stacked, states, final
        soup_hash = tensor_hash(merged)
        copy_state_into(model, merged)  # the live model holds exactly the written soup
        res = ev.evaluate(model, key=f"soup:{soup_hash}", desc="Evaluating the learned soup")

        def write() -> None:
            write_state_dict(merged, ctx.output_dir, max_shard_size=ctx.config.output.max_shard_size,
                             overwrite=True)
            copy_side_files(ctx.folders[0], ctx.output_dir, out_dtype)

        _once(ctx, write)
        mean_w = w.mean(dim=0).tolist()
        coefficients: Dict[str, Any] = (
            {"per_ingredient": [round(x, 6) for x in mean_w]}
            if rows == 1
            else {"per_ingredient_mean": [round(x, 6) for x in mean_w],
                  "per_tensor": {k: [round(x, 6) for x in w[j].tolist()] for j, k in enumerate(names)}}
        )
        coefficients["ingredients"] = [c.name for c in ctx.candidates]
        return MethodResult(
            weights=mean_w,
            mix=_FolderResult(ctx.output_dir, soup_hash),
            score=res.score,
            metrics=dict(res.metrics),
            coefficients=coefficients,
            extra={"granularity": cfg.granularity, "steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
                   "held_out_loss_uniform": loss_uniform, "held_out_loss_learned": loss_learned,
                   "first_step_loss": losses[0] if losses else None,
                   "last_step_loss": losses[-1] if losses else None,
                   "memory_note": message},
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
