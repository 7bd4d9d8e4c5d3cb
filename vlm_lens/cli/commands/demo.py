"""``vlm-lens demo``: the two zoo checkpoints side by side (see :mod:`vlm_lens.zoo.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["demo_command"]


def demo_command(args: argparse.Namespace) -> int:
    from ...zoo.demo import demo

    demo(args.out, images=args.images, n=args.n)
    return 0
