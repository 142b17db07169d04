"""The offline demo: `hf-soups demo` (filled in by the demo issue)."""

from __future__ import annotations

import argparse

DEMO_HELP = "The offline end-to-end demo."


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subparser."""


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    raise SystemExit("the demo is not written yet")
