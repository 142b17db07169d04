"""Tiny fine-tunes whose predictions depend on the input, for tests of greedy and learned soups.

A random tiny BERT predicts one class for every sentence (its [CLS] state barely depends on the input), so every
soup of such models scores the same and a greedy soup never has to decide anything. Here the base's pooler is
centred and scaled on SST-2 train sentences so that the pooled output varies with the input, and each fine-tune
(the base + a small perturbation, like `make_finetune`) gets a linear-probe head fitted by ridge regression on its
own subset of train sentences. Accuracies then differ between fine-tunes, and soups of them differ too.
Deterministic and offline (SST-2 rows from the shared data folder, the character tokenizer); a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch
from datasets import Dataset

from hf_soups.testing.factories import make_base, make_finetune

SST2 = Path("/work/shared/data/sst2")


def sst2_rows(split: str, n: int, offset: int = 0) -> Dataset:
    """Rows `offset`..`offset + n` of an SST-2 split (header-less TSV: sentence, label)."""
    lines = (SST2 / f"{split}.tsv").read_text().splitlines()[offset : offset + n]
    rows = [line.split("\t") for line in lines]
    return Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})


def _encode(tokenizer, data: Dataset) -> Tuple[dict, torch.Tensor]:
    enc = tokenizer(data["sentence"][:], truncation=True, max_length=64, padding=True, return_tensors="pt")
    return dict(enc), torch.tensor(data["label"][:])


def make_probe_finetunes(root: Path, n: int = 5, *, noise: float = 0.005, train_rows: int = 600) -> List[Path]:
    """Write a base and `n` fine-tunes of it under `root`; return the fine-tunes' folders (``ft0``...).

    Each fine-tune declares ``base_model: org/base`` in its card, like `make_finetune` writes it.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

    root = Path(root)
    base = make_base(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    inputs, labels = _encode(tokenizer, sst2_rows("train", train_rows))
    model = BertModel.from_pretrained(str(base)).eval()
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state[:, 0]
        weight = model.pooler.dense.weight
        gen = torch.Generator().manual_seed(0)
        weight.copy_(torch.randn(weight.shape, generator=gen) / (hidden.std(0) * weight.shape[1] ** 0.5))
        model.pooler.dense.bias.copy_(-weight @ hidden.mean(0))
    model.save_pretrained(str(base))
    folders = []
    for i in range(n):
        folder = make_finetune(base, root / f"ft{i}", seed=10 + i, noise=noise, base_model="org/base")
        ft = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        rows = torch.randperm(train_rows, generator=torch.Generator().manual_seed(i))[: train_rows // 4]
        with torch.no_grad():
            pooled = ft.bert(**{k: v[rows] for k, v in inputs.items()}).pooler_output
            design = torch.cat([pooled, torch.ones(len(rows), 1)], 1)
            target = labels[rows].float() * 2 - 1
            sol = torch.linalg.solve(design.T @ design + torch.eye(design.shape[1]), design.T @ target)
            ft.classifier.weight.copy_(torch.stack([-sol[:-1], sol[:-1]]) / 2)
            ft.classifier.bias.copy_(torch.stack([-sol[-1], sol[-1]]) / 2)
        ft.save_pretrained(str(folder))
        folders.append(folder)
    return folders
