"""``vlm-lens demo``: the two zoo checkpoints side by side (see :mod:`vlm_lens.zoo.demo`)."""

from __future__ import annotations

import argparse

from ..quiet import quiet

__all__ = ["demo_command"]


def demo_command(args: argparse.Namespace) -> int:
    from ...extensions import register_all
    from ...zoo.demo import demo

    register_all()  # t.quality(), t.attention_mass(), t.plot: the demo reads its traces through them
    with quiet(args.verbose):
        demo(args.out, images=args.images, n=args.n)
    return 0
