"""``vlm-lens fit-lens``: fit a tuned lens of a model on a dataset's images, on :func:`vlm_lens.TunedLens.fit`; and
``--lens FOLDER``, how the other commands read a lens fitted before."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...core.errors import RunMismatchError, VlmLensError
from ..progress import Steps
from .dataset_args import dataset_of

__all__ = ["check_lens_folder", "fit_lens_command", "load_lens"]


def fit_lens_command(args: argparse.Namespace) -> int:
    dataset = dataset_of(args)  # a missing or malformed dataset fails now, not after loading a 7B model
    out = Path(args.out)
    with Steps(4, "vlm-lens fit-lens") as steps:
        from ... import plot
        from ...tracing import TunedLens, load

        steps.next("loading the model")
        m = load(args.model, dtype=args.dtype, device=args.device)
        steps.next(f"fitting on {len(dataset)} samples")
        settings = {k: v for k, v in (("prompt", args.prompt), ("generate", args.generate)) if v is not None}
        try:
            lens = TunedLens.fit(m, dataset, held_out=args.held_out, epochs=args.epochs, batch_size=args.batch_size,
                                 lr=args.lr, seed=args.seed, out=out, checkpoint_every=args.checkpoint_every,
                                 progress=sys.stderr.isatty(), overwrite=args.overwrite, **settings)
        except RunMismatchError as err:  # said in the shell's terms: --out / --overwrite
            raise RunMismatchError(
                f"--out {err.folder} holds a tuned-lens fit of another model or with other settings; resuming would "
                f"mix them. Differences (stored -> now): {'; '.join(err.differences[:8])}. Choose another --out "
                "folder, or add --overwrite to discard the stored fit.", err.folder, err.differences) from None
        steps.next("measuring")
        written = [out / "lens.safetensors", out / "lens.json"]
        table = lens.held_out
        if len(table):
            table.to_csv(out / "held_out_kl.csv", index=False)
            written += [out / "held_out_kl.csv", plot.save(plot.lens_kl(lens), out / "held_out_kl.png")]
            steps.write(f"KL to the model's output on {lens.info['held_out']['samples']} held-out samples "
                        f"({lens.info['held_out']['positions']} positions), nats:\n"
                        + table.round(4).to_string(index=False))
        else:
            steps.write("no held-out samples (--held-out 0): the lens was not measured")
        steps.write("wrote:\n" + "\n".join(f"  {p}" for p in written)
                    + f"\nread through it with --lens {out} (vlm-lens trace / run)")
    return 0


def check_lens_folder(value: str | None) -> None:
    """Refuse a ``--lens`` folder that holds no lens before any model is loaded (imports no torch)."""
    if value is None or ":" in value:  # zoo:NAME is resolved when the model is loaded
        return
    folder = Path(value)
    if not any((f / "lens.json").is_file() and (f / "lens.safetensors").is_file()
               for f in (folder, folder / "tuned_lens")):
        raise VlmLensError(f"--lens {value}: no tuned lens there (expected lens.json and lens.safetensors, in the "
                           "folder or its tuned_lens/ subfolder); fit one with vlm-lens fit-lens MODEL DATASET --out "
                           "FOLDER.")


def load_lens(value: str | None, model):
    """The tuned lens of ``--lens`` loaded onto ``model``, or None (the logit lens)."""
    if value is None:
        return None
    from ...tracing import TunedLens

    return TunedLens.load(value, model)
