"""Reproduce the model-soups comparison (Wortsman et al., 2022) on SST-2 with MiniLM, offline.

Phases:
  train   fine-tune N >= 6 ingredients of sentence-transformers/all-MiniLM-L6-v2 on the full SST-2 train split
          (grid: learning rate x seed, same classifier-head seed), into .repro/ingredients/ (resumable; see
          scripts/_repro_train.py).
  soup    select on dev, report on test: each ingredient, the best single model, uniform / greedy / learned
          soups (built with hf_soups.SoupBuilder), the logit ensemble, McNemar of each vs the best single model;
          writes .repro/soup/results.json, docs/sst2_soups.png and the "## SST-2 reproduction" section of
          BENCHMARKS.md (see scripts/_repro_soup.py).
  all     train, then soup.

Usage:
  .venv/bin/python scripts/reproduce_sst2.py all
  .venv/bin/python scripts/reproduce_sst2.py soup [--min-ingredients 6] [--learned-steps 100]
  .venv/bin/python scripts/reproduce_sst2.py train --smoke && .venv/bin/python scripts/reproduce_sst2.py soup --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro_train as rt  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="phase", required=True)
    t = sub.add_parser("train", help="fine-tune the ingredients (resumable)")
    t.add_argument("--smoke", action="store_true", help="2 runs x 2 steps on 64 rows, into .repro/smoke/")
    t.add_argument("--only", nargs="*", help="train only these ingredient names")
    for name in ("soup", "all"):
        s = sub.add_parser(name, help="build and compare the soups" if name == "soup" else "train, then soup")
        s.add_argument("--smoke", action="store_true", help="use .repro/smoke/ (64-row dev/test); no BENCHMARKS.md")
        s.add_argument("--min-ingredients", type=int, default=6, help="refuse to run with fewer complete ones")
        s.add_argument("--learned-steps", type=int, default=100, help="Adam steps of the learned soup")
        s.add_argument("--no-benchmarks", action="store_true", help="do not write BENCHMARKS.md")
        s.add_argument("--from-results", action="store_true",
                       help="only re-render the table and figure from .repro/soup/results.json")
    a = p.parse_args(argv)
    if a.phase in ("train", "all"):
        rt.run_train(smoke=a.smoke, only=getattr(a, "only", None))
    if a.phase in ("soup", "all"):
        import _repro_soup

        if a.from_results:
            _repro_soup.rerender(smoke=a.smoke, write_benchmarks=not a.no_benchmarks)
        else:
            _repro_soup.run_soup(smoke=a.smoke, min_ingredients=a.min_ingredients, learned_steps=a.learned_steps,
                                 write_benchmarks=not a.no_benchmarks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
