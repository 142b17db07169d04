"""Helper of tests/test_multiprocess.py: evaluate ingredients and build a greedy soup, in one or several processes.

Run in-process through :func:`run`, or as a script under ``accelerate launch --cpu --num_processes 2``:

    python tests/_mp_greedy.py OUT_DIR MODEL_FOLDER [MODEL_FOLDER ...]

Every process writes ``OUT_DIR/result-<rank>.json``: the ingredients' scores, the greedy history and weights, the
cache files this process wrote, and how many times this process wrote soup weights (`mix` calls).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_ROWS = 91  # not a multiple of processes (2) x batch size (8)


def run(out_dir: Path, folders: List[Path]) -> Dict[str, Any]:
    import hf_soups.mixing as mixing
    from _soup_models import sst2_rows
    from hf_soups.candidates import Candidate
    from hf_soups.evaluation import EvalSettings, Evaluator
    from hf_soups.methods import Greedy, MixContext, score_ingredients
    from hf_soups.metrics import local_metric_path
    from hf_soups.recipe import EvaluationConfig, GreedyConfig, SoupConfig

    mix_calls = []
    real_mix = mixing.mix

    def counting_mix(*args: Any, **kwargs: Any) -> Any:
        mix_calls.append(1)
        return real_mix(*args, **kwargs)

    mixing.mix = counting_mix
    try:
        candidates = [Candidate(str(f)).resolve() for f in folders]
        ev = Evaluator(sst2_rows("dev", N_ROWS), task="sequence-classification",
                       metric=str(local_metric_path("accuracy")), settings=EvalSettings(batch_size=8),
                       cache_dir=out_dir / "cache")
        ev.prepare(folders[0])
        config = SoupConfig(candidates=[c.ref for c in candidates], method="greedy",
                            evaluation=EvaluationConfig(dataset="sst2-dev-rows"), greedy=GreedyConfig())
        ctx = MixContext(candidates=candidates, folders=list(folders), config=config, output_dir=out_dir / "soup",
                         evaluator=ev)
        scores = score_ingredients(ctx)
        result = Greedy().run(ctx)
    finally:
        mixing.mix = real_mix
    acc = ev.accelerator
    report = {
        "rank": acc.process_index,
        "num_processes": acc.num_processes,
        "scores": [scores[i].score for i in range(len(folders))],
        "n_examples": [scores[i].n_examples for i in range(len(folders))],
        "history": [{k: h[k] for k in ("index", "score", "accepted", "stopped_early")} for h in result.history],
        "weights": result.weights,
        "tensor_hash": result.mix.tensor_hash,
        "cache_writes": ev.cache_writes,
        "mix_calls": len(mix_calls),
    }
    (out_dir / f"result-{acc.process_index}.json").write_text(json.dumps(report, indent=1))
    acc.wait_for_everyone()
    return report


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    run(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
