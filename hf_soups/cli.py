"""The `hf-soups` command line: ``verify | build | push | card | demo``.

Exit codes: 0 success (compatible), 1 incompatible candidates, 2 usage errors and inputs that cannot be found.
Each subcommand lives in a small function; the heavy lifting is the library's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional

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

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


#: Other modules register their subcommands here (build, push, card, demo), keeping this file small.
_EXTRA_COMMANDS: List[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    _load_commands()
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


def _load_commands() -> None:
    """Import the modules that add subcommands (kept lazy so `hf-soups --help` stays fast)."""
    import importlib

    for name in ("hf_soups.commands",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


if __name__ == "__main__":
    sys.exit(main())
