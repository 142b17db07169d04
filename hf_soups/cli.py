"""The `hf-soups` command line: ``verify | build | push | card | demo``.

Exit codes: 0 success (compatible), 1 incompatible candidates, 2 usage errors and inputs that cannot be found.
Each subcommand lives in a small function; the heavy lifting is the library's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .errors import HfSoupsError, IncompatibleCandidatesError
from .hub import redact


def _add_hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login). Never printed.")
    p.add_argument("--allow-pickle", action="store_true", help="Accept .bin/.pt weights (pickle can run code).")


def _cmd_verify(args: argparse.Namespace) -> int:
    from .hub import Hub
    from .lineage import verify_lineage

    report = verify_lineage(
        args.candidates,
        base=args.base,
        hub=Hub(token=args.token),
        check_weights=not args.no_weights,
        max_distance=args.max_distance,
        allow_pickle=args.allow_pickle,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_table())
    return 0 if report.ok else 1


def _cmd_build(args: argparse.Namespace) -> int:
    from .builder import SoupBuilder
    from .recipe import SoupConfig

    if args.recipe:
        config = SoupConfig.load(args.recipe)
    elif args.candidates:
        config = SoupConfig(candidates=list(args.candidates))
    else:
        raise _usage("name a RECIPE (.yaml or soup.json) or --candidates A B ...")
    overrides = {}
    if args.method:
        config.method = args.method
    if args.weights:
        config.weights = args.weights
    if args.base:
        config.base = args.base
    if args.alphas:
        config.alphas = args.alphas
    if args.output:
        config.output.dir = args.output
    if args.overwrite:
        config.output.overwrite = True
    if args.push_to:
        config.push_to = args.push_to
    if args.private:
        config.private = True
    if args.allow_pickle:
        config.allow_pickle = True
    if args.eval_dataset:
        overrides.update(eval_dataset=args.eval_dataset, eval_split=args.eval_split, metric=args.metric or "accuracy")
        if args.max_samples:
            overrides["max_samples"] = args.max_samples
    if config.output.dir is None and not config.push_to:
        raise _usage("say where the soup goes: --output DIR and/or --push-to REPO")
    soup = SoupBuilder(config=config, token=args.token, **overrides).build()
    print(soup.summary_table())
    print(f"\nsoup written to {soup.folder}  (tensor hash {soup.tensor_hash[:16]})")
    if config.push_to:
        print(f"pushed to {config.push_to}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import Hub

    folder = Path(args.folder)
    if not (folder / "config.json").exists():
        raise _usage(f"{folder} is not a saved model folder (no config.json)")
    url = Hub(token=args.token).push_folder(folder, args.repo_id, private=args.private,
                                            commit_message="Upload model soup with hf-soups")
    print(url)
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from .soup import Soup

    soup = Soup.from_folder(args.folder)
    card = soup.card()
    if args.print:
        print(str(card))
    else:
        card.save(str(Path(args.folder) / "README.md"))
        print(f"wrote {Path(args.folder) / 'README.md'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _usage(message: str) -> HfSoupsError:
    return HfSoupsError(message, hint="See `hf-soups <command> --help`.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hf-soups` (also used to render `--help`)."""
    parser = argparse.ArgumentParser(
        prog="hf-soups",
        description="Model soups for the Hugging Face stack: verify lineage, evaluate, mix and publish.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "verify",
        help="check that candidates share one base revision and can be averaged",
        description="Check that candidates share one base model revision and everything a soup needs to match. "
        "Exit 0: compatible, 1: incompatible, 2: a candidate cannot be found or the arguments are wrong.",
    )
    p.add_argument("candidates", nargs="+", help="org/model[@revision] or a local folder")
    p.add_argument("--base", default=None, help="the base every candidate must come from: ID@REV or a folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-weights", action="store_true", help="metadata checks only: download no weights")
    p.add_argument("--max-distance", type=float, default=0.5, help="max relative L2 distance to the base")
    _add_hub_args(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "build",
        help="build a soup from a recipe or from candidates",
        description="Build a soup: resolve and pin candidates, verify lineage, evaluate, mix, save and push. "
        "RECIPE is a YAML recipe or a published soup.json (rebuilds it).",
    )
    p.add_argument("recipe", nargs="?", help="recipe .yaml or soup.json")
    p.add_argument("--candidates", nargs="+", help="org/model[@revision] or folders (instead of a recipe)")
    p.add_argument("--method", choices=["uniform", "weighted", "greedy", "learned", "interpolate"])
    p.add_argument("--weights", nargs="+", type=float, help="weights for --method weighted")
    p.add_argument("--alphas", nargs="+", type=float, help="alphas for --method interpolate")
    p.add_argument("--base", help="base model ID@REV or folder")
    p.add_argument("--eval-dataset", help="held-out dataset: Hub name or local .tsv/.csv/.json file")
    p.add_argument("--eval-split", default="validation", help="split of --eval-dataset")
    p.add_argument("--metric", nargs="+", help="evaluate metric id(s) or path(s) (default accuracy)")
    p.add_argument("--max-samples", type=int, help="evaluate on a seeded random subset of this size")
    p.add_argument("--output", help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--push-to", help="Hub repo to publish the soup to (one commit)")
    p.add_argument("--private", action="store_true", help="create the pushed repo as private")
    _add_hub_args(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("push", help="publish a saved soup folder in one commit (e.g. after a failed push)")
    p.add_argument("folder")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("card", help="(re)generate the model card of a saved soup from its soup.json")
    p.add_argument("folder")
    p.add_argument("--print", action="store_true", help="print the card instead of writing README.md")
    p.set_defaults(func=_cmd_card)

    from .demo import add_demo_arguments

    p = sub.add_parser(
        "demo",
        help="the offline end-to-end demo (local Hub, real MiniLM, SST-2 sample)",
        description=_demo_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _demo_description() -> str:
    from .demo import DEMO_HELP

    return DEMO_HELP


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    import warnings

    # The CLI prints tables and one-line messages: a warning is "warning: <what and what to do>", not a source line.
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IncompatibleCandidatesError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 1
    except HfSoupsError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
