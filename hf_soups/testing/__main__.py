"""Run a LocalHub standalone: ``python -m hf_soups.testing --root DIR --port PORT``.

Prints the endpoint, the write token, and how to point the Hugging Face libraries at it; Ctrl-C stops it.
Repos are kept in ``--root`` and served again by the next run on the same folder.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .server import LocalHub


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line, start the hub and serve until interrupted.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m hf_soups.testing", description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="data folder (kept); a temporary folder when omitted (deleted on exit)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--token", help="write token (default: a random hf_local_... token)")
    parser.add_argument("--user", default="local-user", help="user name of the token (default local-user)")
    parser.add_argument("--seed-metrics", metavar="NAMES", default="",
                        help="comma-separated evaluate metrics to publish as evaluate-metric/<name> spaces")
    args = parser.parse_args(argv)

    hub = LocalHub(root=args.root, token=args.token, host=args.host, port=args.port, user=args.user,
                   patch=False).start()
    if args.seed_metrics:
        hub.seed_metrics([n.strip() for n in args.seed_metrics.split(",") if n.strip()])
    print(f"LocalHub serving at {hub.endpoint}  (data: {hub.root})")
    print(f"Write token: {hub.token}")
    print("Point the Hugging Face libraries at it with:")
    print(f"  export HF_ENDPOINT={hub.endpoint} HF_HUB_DISABLE_XET=1 HF_UPDATE_DOWNLOAD_COUNTS=0")
    print(f"  export HF_TOKEN={hub.token}   # only for writes and private repos")
    print("Press Ctrl-C to stop.", flush=True)
    hub.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
