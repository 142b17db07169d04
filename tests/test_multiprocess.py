"""The same evaluation and greedy soup in one process and in two (`torchrun --nproc_per_node 2`, gloo on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _mp_greedy import N_ROWS, run
from _soup_models import make_probe_finetunes

HELPER = Path(__file__).with_name("_mp_greedy.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_processes_give_the_same_scores_and_decisions_and_write_once(tmp_path):
    folders = make_probe_finetunes(tmp_path / "models", 4)
    single = run(tmp_path / "one", folders)
    assert single["num_processes"] == 1 and single["n_examples"] == [N_ROWS] * 4

    out = tmp_path / "two"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(HELPER.parent), os.environ.get("PYTHONPATH", "")])}
    # torchrun with gloo: `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(HELPER), str(out), *map(str, folders)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"result-{r}.json").read_text()) for r in (0, 1)]

    for report in ranks:
        assert report["num_processes"] == 2
        # Every example counted once (gather_for_metrics drops the padding samples), same scores, same soup.
        assert report["n_examples"] == single["n_examples"]
        assert report["scores"] == single["scores"]
        assert [(h["index"], h["accepted"]) for h in report["history"]] == \
            [(h["index"], h["accepted"]) for h in single["history"]]
        full = [(h["index"], h["score"]) for h in report["history"] if not h["stopped_early"]]
        assert full == [(h["index"], h["score"]) for h in single["history"] if not h["stopped_early"]]
        assert report["weights"] == single["weights"] and report["tensor_hash"] == single["tensor_hash"]
    # Files are written once: the cache by the main process only, the soup weights by one `mix` call.
    main, other = ranks
    assert other["cache_writes"] == 0 and other["mix_calls"] == 0 and main["mix_calls"] == 1
    assert main["cache_writes"] == len(list((out / "cache").glob("*.json"))) == single["cache_writes"]
    assert not list((out / "cache").glob(".tmp-*"))
    assert sorted(p.name for p in (out / "soup").iterdir()) == sorted(p.name for p in (tmp_path / "one" / "soup").iterdir())
