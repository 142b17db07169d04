"""`SoupBuilder`: from candidate names to a verified, evaluated, published soup.

Pipeline: resolve (pin every ref to a commit; headers only) -> verify lineage (fails early, lists every
problem) -> fetch weights -> evaluate ingredients -> mix (method) -> :class:`~hf_soups.soup.Soup`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .candidates import Candidate, hyperparameters, resolve_all
from .distributed import run_on_main
from .errors import RecipeError
from .hub import Hub
from .lineage import verify_lineage
from .methods import MixContext, get_method, score_ingredients, trial_key
from .progress import get_logger
from .recipe import EvaluationConfig, GreedyConfig, LearnedConfig, OutputConfig, SoupConfig
from .soup import IngredientReport, Soup, check_output_dir

logger = get_logger(__name__)


class SoupBuilder:
    """Build a model soup from Hub repos (``org/model@revision``) and local folders.

    Args:
        candidates: the fine-tunes to soup (at least two; one for ``interpolate``).
        method: ``uniform``, ``weighted``, ``greedy``, ``learned`` or ``interpolate``.
        weights: per-candidate weights for ``weighted``.
        base: the base model (``id@rev`` or folder) every candidate must come from; required by ``interpolate``.
        eval_dataset: held-out data: a `datasets.Dataset`, or a dataset name / builder (``csv``) / local file.
        eval_split: the split of `eval_dataset` to use when it is a name.
        metric: `evaluate` metric id(s), path(s) or module(s); the first drives selection unless
            `selection_metric` says otherwise.
        config: a full :class:`SoupConfig` (a recipe); keyword arguments above override its fields.
        output_dir: where to write the soup (atomically); default: a temporary folder until `save_pretrained`.
        token: Hub token (never printed or stored).
        compute_metrics: a Trainer-style ``compute_metrics(EvalPrediction) -> dict`` instead of `metric`.
        accelerator: an `accelerate.Accelerator` to evaluate with (default: one is created).
        cache_dir: where evaluation scores are cached (default ``$HF_HOME/hf_soups/scores``).
        **options: any other :class:`SoupConfig` field (``alphas``, ``greedy``, ``learned``, ``compare``,
            ``check_weights``, ``allow_pickle``, ``push_to``, ``private``) or evaluation field (``columns``,
            ``max_samples``, ``batch_size``, ``max_length``, ``task``, ``greater_is_better``, ``eval_config``,
            ``data_files``, ``dataset_kwargs``).

    Example:
        >>> soup = SoupBuilder(
        ...     candidates=["org/bert-sst2-a", "org/bert-sst2-b@3f1c9e2", "./checkpoints/run-c"],
        ...     method="greedy", eval_dataset="stanfordnlp/sst2", eval_split="validation", metric="accuracy",
        ... ).build()                                                          # doctest: +SKIP
        >>> soup.save_pretrained("out/")                                      # doctest: +SKIP
        >>> soup.push_to_hub("org/bert-sst2-soup")                            # doctest: +SKIP
    """

    _EVAL_KEYS = {"columns", "max_samples", "batch_size", "max_length", "task", "greater_is_better",
                  "selection_metric", "data_files", "dataset_kwargs", "seed"}

    def __init__(
        self,
        candidates: Optional[Sequence[Union[str, Candidate]]] = None,
        method: Optional[str] = None,
        *,
        weights: Optional[Sequence[float]] = None,
        base: Optional[str] = None,
        eval_dataset: Any = None,
        eval_split: Optional[str] = None,
        metric: Any = None,
        config: Optional[SoupConfig] = None,
        output_dir: Optional[Union[str, Path]] = None,
        token: Optional[str] = None,
        compute_metrics: Optional[Callable[..., Dict[str, float]]] = None,
        accelerator: Any = None,
        cache_dir: Optional[Union[str, Path]] = None,
        **options: Any,
    ) -> None:
        cfg = config if config is not None else SoupConfig()
        self._candidate_objects = [c for c in (candidates or []) if isinstance(c, Candidate)]
        if candidates is not None:
            cfg.candidates = [c.ref if isinstance(c, Candidate) else str(c) for c in candidates]
        if method is not None:
            cfg.method = method
        if weights is not None:
            cfg.weights = [float(w) for w in weights]
        if base is not None:
            cfg.base = base
        self.dataset_object = None
        eval_options = {k: options.pop(k) for k in list(options) if k in self._EVAL_KEYS}
        eval_config = options.pop("eval_config", None)
        if eval_dataset is not None or metric is not None or eval_options or compute_metrics is not None:
            ev = cfg.evaluation or EvaluationConfig()
            if eval_dataset is not None:
                if isinstance(eval_dataset, str):
                    ev.dataset = eval_dataset
                else:
                    self.dataset_object = eval_dataset
                    ev.dataset = getattr(eval_dataset, "_hf_soups_name", None) or ev.dataset or "in-memory dataset"
            if eval_split is not None:
                ev.split = eval_split
            if eval_config is not None:
                ev.config = eval_config
            if metric is not None and not callable(metric) and isinstance(metric, (str, list, tuple)):
                ev.metric = [metric] if isinstance(metric, str) else [str(m) for m in metric]
            if compute_metrics is not None and metric is None:
                ev.metric = []  # the Trainer-style function is the metric: load no `evaluate` module besides it
            for k, v in eval_options.items():
                setattr(ev, k, v)
            cfg.evaluation = ev
        self.metric_objects = metric if metric is not None and not isinstance(metric, (str, list, tuple)) else None
        for key, value in options.items():
            if key in ("greedy", "learned", "output") and isinstance(value, dict):
                value = {"greedy": GreedyConfig, "learned": LearnedConfig, "output": OutputConfig}[key](**value)
            if not hasattr(cfg, key):
                import difflib

                close = difflib.get_close_matches(key, list(SoupConfig.__dataclass_fields__), n=1)
                raise RecipeError(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            setattr(cfg, key, value)
        if output_dir is not None:
            cfg.output.dir = str(output_dir)
        self.config = cfg
        self.hub = Hub(token=token)
        self.compute_metrics = compute_metrics
        self.accelerator = accelerator
        self.cache_dir = cache_dir

    @classmethod
    def from_recipe(cls, path: Union[str, Path], **overrides: Any) -> "SoupBuilder":
        """A builder for a YAML recipe or a published `soup.json` (rebuilds it)."""
        return cls(config=SoupConfig.load(path), **overrides)

    # -- pipeline --------------------------------------------------------------------------------------------

    def build(self) -> Soup:
        """Resolve, verify, fetch, evaluate and mix; push when `push_to` is set.

        Returns:
            The :class:`Soup`.

        Raises:
            RecipeError: the recipe is invalid. IncompatibleCandidatesError: lineage checks failed (before any
            weight was downloaded when metadata suffices). CandidateNotFoundError, UnsafeWeightsError,
            EvaluationError, MixingError, OutputExistsError, PushError: see their docs.
        """
        cfg = self.config.validate()
        out_dir = Path(cfg.output.dir) if cfg.output.dir else None
        check_output_dir(out_dir, cfg.output.overwrite)

        # 1. resolve every candidate (metadata and headers only): a name that does not exist fails here, before
        # the held-out dataset or any weight is downloaded.
        refs: List[Union[str, Candidate]] = list(self._candidate_objects) or list(cfg.candidates)
        candidates = resolve_all(refs, self.hub, allow_pickle=cfg.allow_pickle,
                                 minimum=1 if cfg.method == "interpolate" else 2)
        if cfg.weights is not None and len(candidates) != len(refs):
            raise RecipeError(
                f"{len(refs) - len(candidates)} candidate(s) name a commit that another candidate names too, so "
                "which weight applies is ambiguous",
                hint="Name each commit once, with one weight each.",
            )
        evaluator = self._make_evaluator() if cfg.evaluation is not None else None

        def check_evaluation(cands: List[Candidate]) -> None:
            # The evaluation set-up (columns, labels against the model, metric loading) fails here, from config
            # and tokenizer files only, before any weight is downloaded.
            if evaluator is not None:
                evaluator.prepare(cands[0].fetch_metadata(self.hub))

        def verify_and_fetch() -> Any:
            report = verify_lineage(candidates, base=cfg.base, hub=self.hub, check_weights=cfg.check_weights,
                                    allow_pickle=cfg.allow_pickle, before_download=check_evaluation)
            report.raise_for_problems()
            folders = [c.fetch(self.hub) for c in candidates]
            base_folder = None
            if cfg.base is not None:
                base_folder = Candidate(cfg.base, allow_pickle=cfg.allow_pickle).resolve(self.hub).fetch(self.hub)
            return report, folders, base_folder

        # 2-3. verify lineage and fetch. Under `accelerate launch` every process runs this method: the main one
        # verifies and downloads first; the others then find every file in the Hub cache (each file crosses the
        # network once), and an error on the main process is raised on every process instead of hanging them.
        state = self._process_state(evaluator)
        fetched = run_on_main(state, verify_and_fetch, what="verifying and downloading the candidates", share=False)
        report, folders, base_folder = fetched if state.is_main_process else verify_and_fetch()
        cfg.candidates = [c.pinned_ref for c in candidates]  # the recipe, pinned: every candidate at its commit

        # 4-5. evaluate and mix into a staging folder next to the output (one path, chosen by the main process):
        # weights, soup.json, card and plot are all written there by the main process and renamed into place at
        # the very end, so a failure at any step leaves the previous output (with overwrite) or nothing, never a
        # half-written soup.
        def make_stage() -> str:
            if out_dir is not None:
                out_dir.parent.mkdir(parents=True, exist_ok=True)
                return tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent)
            return tempfile.mkdtemp(prefix="hf-soups-")

        stage = Path(run_on_main(state, make_stage, what="creating the staging folder"))
        target = stage / "soup"
        try:
            ctx = MixContext(candidates=candidates, folders=folders, config=cfg, output_dir=target,
                             evaluator=evaluator, base_folder=base_folder)
            if evaluator is not None:
                evaluator.prepare(folders[0])
            result = get_method(cfg.method).run(ctx)
            soup = self._assemble(ctx, result, report, write=state.is_main_process)

            def publish() -> None:
                if out_dir is None:
                    return
                if out_dir.exists():  # empty, or a previous soup with overwrite (checked above)
                    os.replace(out_dir, stage / "previous")
                os.replace(target, out_dir)

            run_on_main(state, publish, what="writing the output folder", share=False)
            if out_dir is not None:
                soup._relocate(out_dir)
        finally:
            if out_dir is not None and state.is_main_process:
                shutil.rmtree(stage, ignore_errors=True)
        if cfg.push_to:
            run_on_main(state, lambda: soup.push_to_hub(cfg.push_to, private=cfg.private, token=self.hub.token),
                        what=f"pushing to {cfg.push_to}", share=False)
        return soup

    def _process_state(self, evaluator: Any) -> Any:
        """The Accelerate state that says which process this is (the evaluator's accelerator when there is one)."""
        if evaluator is not None:
            return evaluator.accelerator
        if self.accelerator is not None:
            return self.accelerator
        from accelerate import PartialState

        return PartialState()

    def _make_evaluator(self) -> Any:
        from .evaluation import EvalSettings, Evaluator

        ev = self.config.evaluation
        assert ev is not None
        dataset = self.dataset_object if self.dataset_object is not None else self.hub.load_dataset(
            ev.dataset, config=ev.config, split=ev.split, data_files=ev.data_files, **ev.dataset_kwargs
        )
        settings = EvalSettings(batch_size=ev.batch_size, max_length=ev.max_length, max_samples=ev.max_samples,
                                seed=ev.seed)
        metric = self.metric_objects if self.metric_objects is not None else (
            None if not ev.metric else ev.metric if len(ev.metric) != 1 else ev.metric[0])
        return Evaluator(
            dataset, task=ev.task, metric=metric, selection_metric=ev.selection_metric,
            greater_is_better=ev.greater_is_better, columns=ev.columns or None, split=ev.split, settings=settings,
            compute_metrics=self.compute_metrics, cache_dir=self.cache_dir or default_cache_dir(),
            accelerator=self.accelerator,
        )

    def _assemble(self, ctx: MixContext, result: Any, report: Any, *, write: bool = True) -> Soup:
        cfg = ctx.config
        ev = ctx.evaluator
        references: Dict[str, Optional[float]] = {}
        score, metrics = result.score, dict(result.metrics)
        if ev is not None:
            scores = score_ingredients(ctx)
            if scores:
                pick = max if ev.greater_is_better else min
                references["best_ingredient"] = pick(r.score for r in scores.values())
            if score is None:
                from .modeling import load_folder_into

                model = ctx.model()
                load_folder_into(model, result.mix.output_dir)
                res = ev.evaluate(model, key=f"soup:{result.mix.tensor_hash}", desc="Evaluating the soup")
                score, metrics = res.score, dict(res.metrics)
            if cfg.method != "uniform":
                references["uniform_soup"] = self._uniform_score(ctx)
            if cfg.compare:
                references["logit_ensemble"] = self._ensemble_score(ctx)
        ingredients = [
            IngredientReport(
                ref=c.ref, pinned=c.pinned_ref, sha=c.sha, repo_id=c.repo_id, weight=float(w),
                score=ctx.scores[i].score if i in ctx.scores else None,
                metrics=dict(ctx.scores[i].metrics) if i in ctx.scores else {},
                accepted=w > 0, hyperparameters=hyperparameters(c), license=c.card_data.get("license"),
            )
            for i, (c, w) in enumerate(zip(ctx.candidates, result.weights))
        ]
        soup = Soup(
            folder=result.mix.output_dir, config=cfg, ingredients=ingredients, lineage=report,
            tensor_hash=result.mix.tensor_hash, metrics=metrics, score=score, references=references,
            history=result.history, coefficients=result.coefficients,
            selection_metric=ev.selection_metric if ev is not None else None,
            greater_is_better=ev.greater_is_better if ev is not None else True,
            extra={**result.extra, **({"mixing_warnings": result.mix.warnings} if result.mix.warnings else {})},
        )
        if write:
            soup._write_extras(soup.folder)
        return soup

    def _uniform_score(self, ctx: MixContext) -> Optional[float]:
        from .mixing import RunningSum

        n = len(ctx.folders)
        running = RunningSum(ctx.folders[0])
        for folder in ctx.folders[:-1]:
            running.add(folder)
        running.trial_into(ctx.model(), ctx.folders[-1])
        return ctx.evaluator.evaluate(ctx.model(), key=trial_key(ctx, list(range(n))),
                                      desc="Evaluating the uniform soup").score

    def _ensemble_score(self, ctx: MixContext) -> Optional[float]:
        from .methods import logit_ensemble

        return logit_ensemble(ctx).get(ctx.evaluator.selection_metric)


def default_cache_dir() -> Path:
    """Where evaluation scores are cached: ``$HF_HOME/hf_soups/scores``."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_soups" / "scores"
