"""Data shipped with hf-soups: a small SST-2 sample for the offline demo and tests (see ``README.md`` here).

Example:
    >>> from hf_soups.data import load_sst2_sample
    >>> load_sst2_sample()["validation"].num_rows
    400
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

DATA_DIR = Path(__file__).resolve().parent
SPLITS = ("train", "validation", "test")


def sst2_sample_files() -> Dict[str, Path]:
    """The packaged SST-2 sample files, by split (``train``, ``validation``, ``test``)."""
    return {split: DATA_DIR / f"sst2_{split}.tsv" for split in SPLITS}


def load_sst2_sample(splits: Sequence[str] = SPLITS, limit: Optional[Dict[str, int]] = None):
    """The packaged SST-2 sample as a ``datasets.DatasetDict`` with columns ``sentence`` (str), ``label`` (int).

    Args:
        splits: which splits to load.
        limit: optional number of rows to keep per split (the first ones), e.g. ``{"train": 600}``.

    Returns:
        A ``datasets.DatasetDict``.
    """
    import datasets

    files = sst2_sample_files()
    data = datasets.load_dataset(
        "csv", data_files={s: str(files[s]) for s in splits}, delimiter="\t",
        features=datasets.Features({"sentence": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["negative", "positive"])}),
    )
    for split, n in (limit or {}).items():
        if split in data and n < data[split].num_rows:
            data[split] = data[split].select(range(n))
    return data
