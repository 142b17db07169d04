"""Interrupted runs: scores are cached as they are computed, so a re-run resumes; the output appears whole or
not at all.

A greedy run is killed (SIGKILL, in a subprocess: no clean-up code runs) after some evaluations; the second run
must re-evaluate nothing that was already scored, and end with the same soup as a run never interrupted.
Exceptions injected while the output is written must leave no half-written output folder, no temporary
folder, and an existing folder (with ``overwrite``) as it was.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest

from hf_soups.builder import SoupBuilder
from hf_soups.evaluation import Evaluator
from hf_soups.metrics import local_metric_path

SST2_DEV = Path("/work/shared/data/sst2/dev.tsv")
ACC = str(local_metric_path("accuracy"))

RUNNER = r'''
import json, os, signal, sys, warnings
warnings.simplefilter("ignore")
from hf_soups.builder import SoupBuilder
from hf_soups.evaluation import Evaluator

args = json.loads(open(sys.argv[1]).read())
log, kill_after = args.pop("log"), args.pop("kill_after")
sig = getattr(signal, args.pop("signal", "SIGKILL"))
original = Evaluator.evaluate
fresh = 0

def evaluate(self, model, *a, **kw):
    global fresh
    res = original(self, model, *a, **kw)
    with open(log, "a") as fh:
        fh.write(json.dumps({"key": kw.get("key"), "cached": bool(res.cached), "score": res.score}) + "\n")
    if not res.cached:
        fresh += 1
        if kill_after is not None and fresh >= kill_after:
            os.kill(os.getpid(), sig)   # SIGKILL: like the OOM killer, no clean-up runs; SIGINT: Ctrl-C
    return res

Evaluator.evaluate = evaluate
if "argv" in args:
    from hf_soups.cli import main
    sys.exit(main(args["argv"]))
soup = SoupBuilder(**args).build()
print(json.dumps({"tensor_hash": soup.tensor_hash, "score": soup.score, "history": soup.history}))
'''


@pytest.fixture
def dev_tsv(tmp_path) -> Path:
    lines = [ln for ln in SST2_DEV.read_text().splitlines() if '"' not in ln][:24]
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    return path


def _greedy_args(tiny_models, dev_tsv: Path, out: Path, cache: Path) -> Dict[str, Any]:
    return dict(candidates=[str(tiny_models[k]) for k in ("ft0", "ft1", "ft2")], method="greedy",
                eval_dataset=str(dev_tsv), metric=ACC, max_samples=24, batch_size=8, output_dir=str(out),
                cache_dir=str(cache), check_weights=False)


def _run(tmp_path: Path, name: str, args: Dict[str, Any], *, kill_after=None) -> subprocess.CompletedProcess:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({**args, "log": str(tmp_path / f"{name}.jsonl"), "kill_after": kill_after}))
    return subprocess.run([sys.executable, str(runner), str(spec)], capture_output=True, text=True, timeout=400,
                          cwd=tmp_path, env=_env(tmp_path))


def _env(tmp_path: Path) -> Dict[str, str]:
    import os

    return {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _log(tmp_path: Path, name: str) -> List[Dict[str, Any]]:
    path = tmp_path / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _leftovers(parent: Path, name: str) -> List[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_greedy_run_killed_mid_way_resumes_without_re_evaluating(tiny_models, dev_tsv, tmp_path):
    cache = tmp_path / "scores"
    out = tmp_path / "out"
    args = _greedy_args(tiny_models, dev_tsv, out, cache)

    # 1. killed right after its 4th fresh evaluation (3 ingredients + the first greedy trial)
    killed = _run(tmp_path, "killed", args, kill_after=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = _log(tmp_path, "killed")
    assert len(first) == 4 and not any(e["cached"] for e in first)
    assert not out.exists(), "a killed run left an output folder"
    # SIGKILL runs no clean-up: at most the staging folder next to the output may remain, never `out` itself
    assert all(name.startswith(".out.tmp-") for name in _leftovers(tmp_path, "out"))
    assert len(list(cache.glob("*.json"))) == 4, "every score computed before the kill is in the cache"

    # 2. the re-run: what was scored comes from the cache; only the rest is evaluated
    resumed = _run(tmp_path, "resumed", args)
    assert resumed.returncode == 0, resumed.stderr
    second = _log(tmp_path, "resumed")
    scored_before = {e["key"] for e in first}
    again = [e["key"] for e in second if e["key"] in scored_before and not e["cached"]]
    assert again == [], f"re-evaluated after the restart: {again}"
    assert {e["key"] for e in second} >= scored_before
    assert [e for e in second if not e["cached"]], "the rest of the run was evaluated"
    assert (out / "model.safetensors").exists() and (out / "soup.json").exists()

    # 3. same soup as a run never interrupted (its own empty cache)
    clean_args = _greedy_args(tiny_models, dev_tsv, tmp_path / "clean", tmp_path / "clean-scores")
    clean = _run(tmp_path, "clean", clean_args)
    assert clean.returncode == 0, clean.stderr
    a, b = json.loads(resumed.stdout.splitlines()[-1]), json.loads(clean.stdout.splitlines()[-1])
    assert a["tensor_hash"] == b["tensor_hash"] and a["score"] == b["score"]
    decisions = lambda h: [(s["ingredient"], s["accepted"]) for s in h]  # noqa: E731
    assert decisions(a["history"]) == decisions(b["history"])
    assert all(s["cached"] for s in a["history"][:2])  # the first trial came from the killed run's cache
    assert _leftovers(tmp_path, "clean") == []


def test_ctrl_c_in_the_cli_exits_130_and_the_rerun_resumes(tiny_models, dev_tsv, tmp_path):
    out = tmp_path / "out"
    argv = ["build", "--candidates", *[str(tiny_models[k]) for k in ("ft0", "ft1", "ft2")], "--method", "greedy",
            "--eval-dataset", str(dev_tsv), "--metric", ACC, "--max-samples", "24", "--output", str(out)]
    stopped = _run(tmp_path, "ctrl-c", {"argv": argv, "signal": "SIGINT"}, kill_after=4)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not out.exists() and _leftovers(tmp_path, "out") == []
    first = _log(tmp_path, "ctrl-c")
    assert len(first) == 4

    resumed = _run(tmp_path, "rerun", {"argv": argv})
    assert resumed.returncode == 0, resumed.stderr
    second = _log(tmp_path, "rerun")
    done = {e["key"] for e in first}
    assert [e["key"] for e in second if e["key"] in done and not e["cached"]] == []
    assert (out / "soup.json").exists() and "soup written to" in resumed.stdout


def _record_evaluations(monkeypatch, *, fail_at=None, error: type = RuntimeError) -> List[Dict[str, Any]]:
    """Wrap Evaluator.evaluate to log each call; raise `error` instead of the `fail_at`-th fresh evaluation."""
    calls: List[Dict[str, Any]] = []
    original = Evaluator.evaluate

    def evaluate(self, model, *args, **kwargs):
        fresh = len([c for c in calls if not c["cached"]])
        if fail_at is not None and fresh + 1 == fail_at and not (
            self.cache_dir is not None and kwargs.get("key") and self.cache_path(kwargs["key"]).exists()
        ):
            raise error("injected crash during an evaluation")
        res = original(self, model, *args, **kwargs)
        calls.append({"key": kwargs.get("key"), "cached": bool(res.cached)})
        return res

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    return calls


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "crash"])
def test_interrupted_evaluation_resumes_in_process(tiny_models, dev_tsv, tmp_path, monkeypatch, error):
    cache, out = tmp_path / "scores", tmp_path / "out"
    args = _greedy_args(tiny_models, dev_tsv, out, cache)
    calls = _record_evaluations(monkeypatch, fail_at=5, error=error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match="injected crash"):
            SoupBuilder(**args).build()
    assert len(calls) == 4 and not out.exists() and _leftovers(tmp_path, "out") == []
    done = {c["key"] for c in calls}

    monkeypatch.undo()
    calls = _record_evaluations(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soup = SoupBuilder(**args).build()
    assert [c["key"] for c in calls if c["key"] in done and not c["cached"]] == []
    assert soup.folder == out and (out / "soup.json").exists()


# -- atomic output ---------------------------------------------------------------------------------------------


def _uniform(tiny_models, out: Path, **kw) -> SoupBuilder:
    return SoupBuilder(candidates=[str(tiny_models["ft0"]), str(tiny_models["ft1"])], method="uniform",
                       output_dir=out, check_weights=False, **kw)


def _fail_after_tensors(monkeypatch, n: int) -> None:
    from hf_soups.writer import ShardedSafetensorsWriter

    original = ShardedSafetensorsWriter.write
    written = {"n": 0}

    def write(self, name, data, offset=0):
        written["n"] += 1
        if written["n"] > n:
            raise OSError(28, "No space left on device (injected)")
        return original(self, name, data, offset)

    monkeypatch.setattr(ShardedSafetensorsWriter, "write", write)


def test_failure_while_writing_weights_leaves_no_output(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fail_after_tensors(monkeypatch, 5)
    with pytest.raises(OSError, match="No space left"):
        _uniform(tiny_models, out).build()
    assert not out.exists() and _leftovers(tmp_path, "out") == []


def _fail_card(monkeypatch) -> None:
    import hf_soups.card

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure while writing the model card")

    monkeypatch.setattr(hf_soups.card, "build_card", boom)


def test_failure_while_writing_the_card_leaves_no_half_written_output(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fail_card(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        _uniform(tiny_models, out).build()
    assert not out.exists(), f"half-written output: {sorted(p.name for p in out.iterdir())}"
    assert _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("where", ["weights", "card"])
def test_failed_overwrite_keeps_the_previous_output(tiny_models, tmp_path, monkeypatch, where):
    out = tmp_path / "out"
    _uniform(tiny_models, out).build()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if where == "weights":
        _fail_after_tensors(monkeypatch, 5)
    else:
        _fail_card(monkeypatch)
    with pytest.raises((OSError, RuntimeError), match="injected"):
        _uniform(tiny_models, out, output={"dir": str(out), "overwrite": True}).build()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before, "a failed --overwrite run destroyed the previous soup"
    assert _leftovers(tmp_path, "out") == []


def test_save_pretrained_failure_leaves_no_folder(tiny_models, tmp_path, monkeypatch):
    soup = _uniform(tiny_models, tmp_path / "out").build()
    target = tmp_path / "copy"
    _fail_card(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        soup.save_pretrained(target)
    assert not target.exists() and _leftovers(tmp_path, "copy") == []


def test_a_truncated_cache_file_is_a_miss_not_a_crash(tiny_models, dev_tsv, tmp_path, monkeypatch):
    cache = tmp_path / "scores"
    args = _greedy_args(tiny_models, dev_tsv, tmp_path / "out", cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = SoupBuilder(**args).build()
    files = sorted(cache.glob("*.json"))
    assert files
    files[0].write_text(files[0].read_text()[:20])  # e.g. a disk that filled up under another tool
    calls = _record_evaluations(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = SoupBuilder(**{**args, "output": {"dir": str(tmp_path / "out"), "overwrite": True}}).build()
    assert len([c for c in calls if not c["cached"]]) == 1  # only the damaged entry is evaluated again
    assert again.tensor_hash == first.tensor_hash
    json.loads(files[0].read_text())  # and it is whole again
