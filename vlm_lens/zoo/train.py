"""The recipe that trains the zoo's two checkpoints from scratch: ``python -m vlm_lens.zoo.train --out DIR``.

Stages (each timed, its losses and a held-out measurement written to ``DIR/measurements.json``):

1. ``data``: ``train_images`` synthetic images of seed ``seed`` (the evaluation uses seed 1, never trained on).
2. ``vision``: the CLIP tower, patch embedding started from a whitened DCT basis, trained to detect and grade the
   seven degradations (:mod:`.vision`); then frozen, its features cached once for all decoder steps.
3. ``one-stage``: projector + decoder on image -> "{description} The quality of the image is {level}." in one go.
4. ``two-stage``: stage 1, image -> description; stage 2, the quality sentence from the description, the image
   tokens holding another sample's image (:mod:`.decoder` explains why), mixed with description replay.
5. ``lens``: a tuned lens per checkpoint (:mod:`.lenses`), fitted on the checkpoint trained by the same command or,
   alone (``--stage lens``), on the shipped one, whose weights it only reads; written to
   ``DIR/<checkpoint>/tuned_lens/`` (copy it into the shipped checkpoint's folder).

Both decoders start from the same initialisation and get the same number of decoder steps in total. The checkpoints
are written with ``save_pretrained`` as ``DIR/tiny-biqa-one-stage`` and ``DIR/tiny-biqa-two-stage``; copy them to
``vlm_lens/zoo/checkpoints/`` to ship them. Everything is seeded: the same command on the same software gives the
same weights (up to floating-point summation order across CPU kernels).

Example:
    $ python -m vlm_lens.zoo.train --out runs/zoo            # the shipped recipe (~19 min on 2 quiet cores + lenses)
    $ python -m vlm_lens.zoo.train --out runs/zoo --stage lens   # the shipped checkpoints' tuned lenses (10-20 min)
    $ python -m vlm_lens.zoo.train --out /tmp/zoo --quick    # a few steps of every stage, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .decoder import Sequences, cache_features, train_decoder
from .model import Architecture, build
from .synthetic import synthetic_arrays
from .vision import init_dct, pretrain_vision

__all__ = ["Recipe", "QUICK", "main", "run"]


@dataclass(frozen=True)
class Recipe:
    """Every setting of the recipe (defaults: the shipped checkpoints)."""

    seed: int = 0
    train_images: int = 24000
    val_images: int = 500
    val_seed: int = 2
    vision_steps: int = 2000
    vision_batch: int = 64
    vision_lr: float = 2e-3
    decoder_batch: int = 32
    decoder_lr: float = 1e-3
    one_stage_steps: int = 1200
    two_stage_describe_steps: int = 600
    two_stage_rate_steps: int = 600
    rate_fraction: float = 2 / 3
    lens_images: int = 512    # stage lens (docs/zoo.md, "Tuned lenses"): images of seed `seed`, traced 64 at a time
    lens_held_out: int = 256  # held-out images of seed 1
    lens_epochs: int = 2
    lens_batch: int = 2
    lens_lr: float = 3e-3
    lens_trace_batch: int = 64


#: A few steps of everything (tests, smoke runs).
QUICK = Recipe(train_images=256, val_images=32, vision_steps=6, vision_batch=16, one_stage_steps=6,
               two_stage_describe_steps=4, two_stage_rate_steps=4, decoder_batch=8, lens_images=8, lens_held_out=4,
               lens_epochs=1, lens_batch=4)

NAMES = {"one-stage": "tiny-biqa-one-stage", "two-stage": "tiny-biqa-two-stage"}
DECODERS = ("one-stage", "two-stage")


def run(out: str | Path, recipe: Recipe = Recipe(), stages: tuple[str, ...] = ("one-stage", "two-stage", "lens"),
        arch: Architecture = Architecture(), log: Callable[[str], None] = print) -> dict:
    """Run the recipe; write the checkpoints, their lenses and ``measurements.json`` to ``out``. Returns the
    measurements."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    measurements: dict = {"recipe": asdict(recipe), "architecture": arch.to_dict(), "torch_threads":
                          torch.get_num_threads(), "load_average_start": _load(), "stages": {}}
    begin = time.perf_counter()

    def save_measurements():
        measurements["total_seconds"] = time.perf_counter() - begin
        measurements["load_average_end"] = _load()
        (folder / "measurements.json").write_text(json.dumps(measurements, indent=1))

    if any(stage in DECODERS for stage in stages):
        _decoders(folder, recipe, [s for s in stages if s in DECODERS], arch, measurements, save_measurements, log)
    if "lens" in stages:
        _lenses(folder, recipe, measurements, save_measurements, log)
    save_measurements()
    log(f"total {measurements['total_seconds']:.0f} s")
    return measurements


def _decoders(folder: Path, recipe: Recipe, stages: list[str], arch: Architecture, measurements: dict,
              save_measurements: Callable[[], None], log: Callable[[str], None]) -> None:
    """Stages data, vision, features and the decoders named in ``stages``."""
    t = time.perf_counter()
    images, labels = synthetic_arrays(recipe.train_images, recipe.seed)
    val_images, val_labels = synthetic_arrays(recipe.val_images, recipe.val_seed)
    measurements["stages"]["data"] = {"seconds": time.perf_counter() - t, "train_images": len(images),
                                      "val_images": len(val_images)}
    log(f"data: {len(images)} + {len(val_images)} images in {time.perf_counter() - t:.0f} s")

    base, processor = build(arch, seed=recipe.seed)
    init_dct(base.model.vision_tower, images)
    measurements["stages"]["vision"] = pretrain_vision(
        base, images, labels, steps=recipe.vision_steps, batch=recipe.vision_batch, lr=recipe.vision_lr,
        seed=recipe.seed, val=(val_images, val_labels), log=log)
    t = time.perf_counter()
    features = cache_features(base, images)
    measurements["stages"]["features"] = {"seconds": time.perf_counter() - t}
    save_measurements()
    sequences = Sequences.build(processor, labels)
    tower = {k: v.clone() for k, v in base.model.vision_tower.state_dict().items()}
    decoder_init = {k: v.clone() for k, v in base.state_dict().items()}

    for stage in stages:
        model, _ = build(arch, seed=recipe.seed)
        model.load_state_dict(decoder_init)
        model.model.vision_tower.load_state_dict(tower)
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
        parts = {}
        if stage == "one-stage":
            parts["answer"] = train_decoder(model, features, sequences, mix={"answer": 1.0},
                                            steps=recipe.one_stage_steps, batch=recipe.decoder_batch,
                                            lr=recipe.decoder_lr, seed=recipe.seed + 1, name="one-stage", log=log)
        elif stage == "two-stage":
            parts["describe"] = train_decoder(model, features, sequences, mix={"describe": 1.0},
                                              steps=recipe.two_stage_describe_steps, batch=recipe.decoder_batch,
                                              lr=recipe.decoder_lr, seed=recipe.seed + 1, name="two-stage 1", log=log)
            f = recipe.rate_fraction
            parts["rate"] = train_decoder(model, features, sequences, mix={"rate": f, "describe": 1 - f},
                                          steps=recipe.two_stage_rate_steps, batch=recipe.decoder_batch,
                                          lr=recipe.decoder_lr, seed=recipe.seed + 2, name="two-stage 2", log=log)
        else:
            raise ValueError(f"unknown stage {stage!r}")
        target = folder / NAMES[stage]
        model.eval()
        model.save_pretrained(target)
        processor.save_pretrained(target)
        t = time.perf_counter()
        parts["val"] = validate(target, val_images, val_labels)
        parts["val"]["seconds"] = time.perf_counter() - t
        measurements["stages"][stage] = parts
        log(f"{stage}: {json.dumps(parts['val'])}")
        save_measurements()


def _lenses(folder: Path, recipe: Recipe, measurements: dict, save_measurements: Callable[[], None],
            log: Callable[[str], None]) -> None:
    """Stage lens: a tuned lens for each checkpoint, trained here or shipped (:mod:`.lenses`)."""
    from ..tracing import load
    from . import checkpoint_path
    from .lenses import fit_zoo_lens

    parts = {}
    for stage, name in NAMES.items():
        trained = folder / name
        model = load(str(trained if (trained / "config.json").exists() else checkpoint_path(name)))
        parts[stage] = fit_zoo_lens(model, name, trained / "tuned_lens", images=recipe.lens_images,
                                    held_out=recipe.lens_held_out, epochs=recipe.lens_epochs, batch=recipe.lens_batch,
                                    lr=recipe.lens_lr, trace_batch=recipe.lens_trace_batch, seed=recipe.seed, log=log)
        measurements["stages"]["lens"] = parts
        save_measurements()


def _load() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (timings are only comparable at similar load)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def validate(path: Path, images: np.ndarray, labels, batch: int = 50) -> dict:
    """SRCC / PLCC of the Q-Align score and per-type description F1 on the validation images (greedy answers)."""
    from ..tracing import load
    from .evaluate import answer_metrics, greedy_readings

    model = load(str(path))
    readings = greedy_readings(model, images, batch=batch, attention=False, lens=False)
    return answer_metrics(readings, labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm_lens.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the checkpoints and measurements.json")
    parser.add_argument("--stage", choices=["all", "one-stage", "two-stage", "lens"], default="all",
                        help="which checkpoint(s) to train (the data and vision stages run with each decoder), or "
                             "lens: only the tuned lenses, of the checkpoints in --out or else the shipped ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override recipe fields, e.g. --set vision_steps=800 one_stage_steps=600")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = replace(QUICK if args.quick else Recipe(), seed=args.seed)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in Recipe.__dataclass_fields__:
            parser.error(f"--set {item}: unknown field {key!r}; fields: {', '.join(Recipe.__dataclass_fields__)}")
        field_type = type(getattr(recipe, key))
        recipe = replace(recipe, **{key: field_type(value)})
    stages = ("one-stage", "two-stage", "lens") if args.stage == "all" else (args.stage,)
    run(args.out, recipe, stages)


if __name__ == "__main__":
    main()
