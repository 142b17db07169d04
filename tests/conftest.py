"""Shared fixtures: tiny random models (built once per session), LocalHub (from the package's pytest plugin)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict

import pytest

# Every Hugging Face cache (hub, datasets, evaluate and its `evaluate_modules` package, matplotlib's) in a fresh
# folder per session, set before any of those libraries is imported: tests never read what an earlier run or
# the user left in ~/.cache (a stale metric module there once hid a demo failure that only a fresh machine
# showed) and never write there. Subprocesses started by tests inherit it.
_HF_HOME = tempfile.mkdtemp(prefix="hf-soups-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, True)
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_EVALUATE_CACHE",
             "HF_METRICS_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE"):
    os.environ.pop(_var, None)
os.environ["HF_HOME"] = _HF_HOME
os.environ["MPLCONFIGDIR"] = os.path.join(_HF_HOME, "matplotlib")

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import importlib.util

if importlib.util.find_spec("hf_soups.testing.pytest_plugin"):
    pytest_plugins = ["hf_soups.testing.pytest_plugin"]

BASE_REV = "a" * 40


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight over shared CPUs); restored afterwards.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")`` or on single tests.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Dict[str, Path]:
    """A tiny base and fine-tunes of it, as local folders.

    Keys: ``base``; ``ft0``..``ft2`` (same head seed, declared base ``org/base@BASE_REV``); ``badhead`` (another
    head seed); ``badrev`` (declares another base revision); ``labels`` (another label map); ``wide`` (another
    architecture width, so other tensor shapes).
    """
    from hf_soups.testing.factories import make_base, make_finetune

    root = tmp_path_factory.mktemp("tiny")
    base = make_base(root / "base")
    out = {"base": base}
    for i in range(3):
        out[f"ft{i}"] = make_finetune(base, root / f"ft{i}", seed=i + 1, base_model="org/base",
                                      base_revision=BASE_REV, hyperparameters={"learning_rate": 1e-5 * (i + 1)})
    out["badhead"] = make_finetune(base, root / "badhead", seed=7, head_seed=99, base_model="org/base",
                                   base_revision=BASE_REV)
    out["badrev"] = make_finetune(base, root / "badrev", seed=8, base_model="org/base", base_revision="b" * 40)
    out["labels"] = make_finetune(base, root / "labels", seed=9, base_model="org/base", base_revision=BASE_REV,
                                  id2label={0: "neg", 1: "pos"})
    wide_base = make_base(root / "wide-base", hidden_size=48)
    out["wide"] = make_finetune(wide_base, root / "wide", seed=3, base_model="org/base", base_revision=BASE_REV)
    return out
