"""``vlm-lens``: the verbs of vlm_lens from the shell. A thin layer: parse, call the Python API, print, write files.

Exit codes: 0 done, 1 failed (said in one line; ``--debug`` shows the traceback), 2 bad usage (argparse's message
and the usage line). ``--help`` on every command shows examples.

Example:
    $ vlm-lens demo
    $ vlm-lens trace path/to/llava-1.5-7b-hf img.jpg "How would you rate the quality of this image?" \\
          --generate 8 --out runs/img --html
    $ vlm-lens run path/to/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage
    $ vlm-lens eval path/to/llava-1.5-7b-hf q-align/test_live.json --dmos
    $ vlm-lens fit-lens path/to/llava-1.5-7b-hf koniq_train.csv --out lenses/llava
"""

from __future__ import annotations

import sys
from typing import Sequence

from .parser import build_parser
from .usage import UsageError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlm-lens`` with ``argv`` (default: the process arguments) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or bad usage (2, message already printed)
        return int(exit_.code or 0)
    if not getattr(args, "command", None):
        parser.print_usage(sys.stderr)
        print("vlm-lens: error: choose a command (demo, trace, run, compare, eval, fit-lens); see vlm-lens --help",
              file=sys.stderr)
        return 2
    from ..core.errors import VlmLensError

    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"vlm-lens {args.command}: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:  # options argparse accepts one by one, not together: said as argparse says it
        print(f"{args.usage()}vlm-lens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the shell gets one line; --debug gets the traceback
        if args.debug:
            raise
        kind = "" if isinstance(err, VlmLensError) else f"{type(err).__name__}: "
        hint = "" if isinstance(err, VlmLensError) else " (run with --debug for the traceback)"
        message = " ".join(str(err).split())
        print(f"vlm-lens {args.command}: error: {kind}{message}{hint}", file=sys.stderr)
        return 1
