"""``vlm-lens demo``: the two shipped BIQA checkpoints side by side, on synthetic images and on yours.

Loads ``zoo:tiny-biqa-one-stage`` and ``zoo:tiny-biqa-two-stage`` (:mod:`vlm_lens.zoo`), lets each describe and
rate ``n`` synthetic images with known degradations (plus any image files given), traces every answer, and writes
to ``out``:

``summary.csv``                     one row per image and checkpoint: ground truth (synthetic images), answer,
                                    level, Q-Align score, first lens layer where the level is top-1, attention
                                    mass of the decision position on image and description tokens
``<image>/<checkpoint>_latent.png`` latent-output heatmap over the answer (the lens's top-1 per layer)
``<image>/<checkpoint>_topk.png``   top-5 lens candidates per layer where the level word is chosen
``<image>/compare.png``             both checkpoints: level-word probabilities by layer, attention by segment
``<image>/compare_latent.png``      both latent-output heatmaps on one colour scale
``attention_by_segment.png``        attention of the decision position by segment, per layer, mean over images
``<image>.png``                     the image itself
==================================  ==========================================================================
=======
========================================  ====================================================================
``summary.csv``                           one row per image and checkpoint: ground truth (synthetic images),
                                          answer, level, Q-Align score, first layer where the level is top-1
                                          through the logit lens and through the tuned lens, attention mass of
                                          the decision position on image and description tokens
``<image>/<checkpoint>_latent.png``       latent-output heatmap over the answer (the logit lens's top-1 per
                                          layer)
``<image>/<checkpoint>_latent_tuned.png`` the same read through the checkpoint's shipped tuned lens
``<image>/<checkpoint>_topk.png``         top-5 lens candidates per layer where the level word is chosen
``<image>/compare.png``                   both checkpoints: level-word probabilities by layer, attention by segment
``<image>/compare_latent.png``            both latent-output heatmaps on one colour scale
``attention_by_segment.png``              attention of the decision position by segment, per layer, mean over
                                          images
``lens_kl.png``                           how far each layer's reading is from the output, logit vs tuned lens
                                          (held-out KL measured when the lenses were fitted)
``<image>.png``                           the image itself
========================================  ====================================================================

The *decision position* is the one whose logits choose the level word (the token before it): the Q-Align score,
the top-k figure, the level-word lines and the attention mass are all read there.

Example:
    >>> from vlm_lens.zoo.demo import demo
    >>> table = demo("vlm_lens_demo", n=1, progress=False, log=lambda text: None)
    >>> sorted(table["checkpoint"])
    ['one-stage', 'two-stage']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..biqa.vocabulary import LEVELS
from ..core.errors import VlmLensError

__all__ = ["CHECKPOINTS", "demo"]

#: Short name -> zoo checkpoint the demo loads.
CHECKPOINTS = {"one-stage": "zoo:tiny-biqa-one-stage", "two-stage": "zoo:tiny-biqa-two-stage"}
#: Tokens generated per answer (the zoo's longest answer is 36 tokens).
NEW_TOKENS = 48


def demo(out: str | Path = "vlm_lens_demo", images: Sequence[Any] = (), *, n: int = 3, seed: int = 1,
         prompt: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Trace both zoo checkpoints on ``n`` synthetic images and ``images``; write figures and ``summary.csv``.

    Args:
        out: Output folder (created).
        images: Extra images: file paths, PIL images or ``[H, W, 3]`` uint8 arrays.
        n: Synthetic images (of :func:`vlm_lens.zoo.synthetic` with ``seed``; the zoo never trained on seed 1).
        prompt: The question (default: the zoo's first prompt, "How would you rate the quality of this image?").
        progress: Show a progress bar on stderr.
        log: Where the summary table and the list of written files go.

    Returns:
        The summary table (also written to ``out/summary.csv``).

    Raises:
        VlmLensError: ``n`` is negative, there is no image at all, or an image cannot be read (checked before any
            model is loaded).
    """
    from tqdm.auto import tqdm

    from .. import zoo
    from ..core.images import load_image
    from ..tracing import TunedLens, load, trace
    from . import extensions  # noqa: F401 - registers zoo:NAME as a model name

    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise VlmLensError(f"n={n!r}: expected a number of synthetic images >= 0.")
    if n == 0 and not images:
        raise VlmLensError("nothing to trace: give n >= 1 synthetic images or some image files.")
    pictures, names, truth = [], [], []
    if n:
        synthetic, labels = zoo.synthetic(n, seed=seed)
        pictures += synthetic
        names += [f"synthetic_{i}" for i in range(n)]
        truth += [row for _, row in labels.iterrows()]
    for image in images:
        pictures.append(load_image(image))
        names.append(_unique(_stem(image, len(names)), names))
        truth.append(None)
    prompt = zoo.PROMPTS[0] if prompt is None else prompt
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VlmLensError(f"out={str(folder)!r}: cannot create the output folder ({error}).") from None

    steps = 2 * len(CHECKPOINTS) + 1 + len(pictures) + 1
    with tqdm(total=steps, desc="vlm-lens demo", disable=None if progress else True, leave=False, unit="step") as bar:
        traces: dict[str, list] = {}
        lenses: dict[str, TunedLens] = {}
        for short, source in CHECKPOINTS.items():
            bar.set_postfix_str(f"loading {short}")
            model = load(source)
            lenses[short] = TunedLens.load(source, model)  # shipped in the checkpoint's tuned_lens/
            bar.update()
            bar.set_postfix_str(f"tracing {short}")
            traces[short] = trace(model, pictures, [prompt] * len(pictures), generate=NEW_TOKENS)
            bar.update()
        rows, masses = [], []
        for i, (name, picture, known) in enumerate(zip(names, pictures, truth)):
            bar.set_postfix_str(f"figures of {name}")
            picture.save(folder / f"{name}.png")
            pair = {short: traces[short][i] for short in CHECKPOINTS}
            readings = {short: _read(t, lenses[short]) for short, t in pair.items()}
            for short, t in pair.items():
                rows.append(_row(name, short, t, readings[short], known))
                if readings[short]["mass"] is not None:
                    masses.append(readings[short]["mass"].assign(checkpoint=short, image=name))
            _figures(folder / name, pair, readings, lenses)
            bar.update()
        bar.set_postfix_str("attention by segment")
        if masses:
            _attention_figure(pd.concat(masses), folder / "attention_by_segment.png")
        from ..plot import lens_kl, save

        save(lens_kl(lenses), folder / "lens_kl.png", dpi=120)
        bar.update()
    table = pd.DataFrame(rows)
    table.to_csv(folder / "summary.csv", index=False)
    shown = table[["image", "checkpoint", "true_level", "level", "score", "lens_first_top1", "tuned_first_top1",
                   "attention_image", "attention_description"]]
    log(f"prompt: {prompt!r}; answers of {len(pictures)} image(s):")
    for r in table.itertuples(index=False):
        log(f"  {r.image:>14} {r.checkpoint:>9}: {r.answer}")
    log(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    log(f"wrote {folder}/: summary.csv, attention_by_segment.png, lens_kl.png, and per image <image>.png, "
        "<image>/{one-stage,two-stage}_{latent,latent_tuned,topk}.png, <image>/compare.png, "
        "<image>/compare_latent.png")
    return table


# ----------------------------------------------------------------------------------------------------- reading
def _read(t, lens=None) -> dict:
    """Level, score, decision position and first top-1 lens layer (:func:`vlm_lens.zoo.measure.read`; also through
    ``lens``, the tuned lens), and the attention there by segment."""
    from .measure import read

    reading = read(t)
    tuned = read(t, lens=lens).lens_first_top1 if lens is not None and reading.level is not None else None
    out = {"level": reading.level, "score": reading.score, "decision": reading.decision, "mass": None,
           "first_top1": reading.lens_first_top1, "tuned_first_top1": tuned}
    if reading.level is not None:
        out["mass"] = t.attention_mass(query="decision").groupby(["layer", "segment"], as_index=False)["mass"].mean()
    return out


def _row(name: str, short: str, t, reading: dict, known) -> dict:
    mass = reading["mass"]
    share = (lambda segment: float(mass[mass["segment"] == segment]["mass"].mean())) if mass is not None else None
    return {"image": name, "checkpoint": short,
            "true_mos": float(known["mos"]) if known is not None else math.nan,
            "true_level": known["level"] if known is not None else None,
            "true_description": known["description"] if known is not None else None,
            "answer": t.answer, "level": reading["level"], "score": reading["score"],
            "lens_first_top1": reading["first_top1"], "tuned_first_top1": reading["tuned_first_top1"],
            "attention_image": share("image") if share else math.nan,
            "attention_description": share("description") if share else math.nan}


# ----------------------------------------------------------------------------------------------------- figures
def _figures(folder: Path, pair: dict, readings: dict, lenses: dict) -> None:
    from .. import plot

    folder.mkdir(parents=True, exist_ok=True)
    for short, t in pair.items():
        plot.save(plot.latent_output(t, positions="response", context=2), folder / f"{short}_latent.png", dpi=120)
        plot.save(plot.latent_output(t, positions="response", context=2, lens=lenses[short]),
                  folder / f"{short}_latent_tuned.png", dpi=120)
        plot.save(plot.topk(t, position=readings[short]["decision"], k=5), folder / f"{short}_topk.png", dpi=120)
    (a_name, a), (b_name, b) = pair.items()
    plot.save(plot.compare(a, b, "latent_output", names=(a_name, b_name), positions="response", context=2),
              folder / "compare_latent.png", dpi=120)
    plot.save(_compare_figure(pair, readings), folder / "compare.png", dpi=120)


def _compare_figure(pair: dict, readings: dict):
    """Two columns (one per checkpoint): level-word probabilities by layer, and attention by segment, at the
    decision position; rows share their scales."""
    from ..plot import draw_attention_mass, draw_target_words
    from ..plot.style import new_figure, style

    with style():
        fig = new_figure(10.5, 6.0)
        axes = fig.subplots(2, len(pair), sharey="row", squeeze=False)
        for column, (short, t) in enumerate(pair.items()):
            reading = readings[short]
            top, bottom = axes[0][column], axes[1][column]
            if reading["decision"] is None:
                top.set_title(f"{short}: no level word in the answer")
                top.set_axis_off()
                bottom.set_axis_off()
                continue
            draw_target_words(top, t.lens_targets(list(LEVELS), positions=[reading["decision"]]), ylim=(0.0, 1.0))
            top.set_title(f"{short}: says {reading['level']!r} (score {reading['score']:.2f})")
            draw_attention_mass(bottom, reading["mass"])
            bottom.set_title(f"{short}: attention of the decision position {reading['decision']} by segment")
    return fig


def _attention_figure(masses: pd.DataFrame, path: Path) -> None:
    """Mean over images of the decision position's attention by segment, one panel per checkpoint."""
    from ..plot import draw_attention_mass, save
    from ..plot.style import new_figure, style

    mean = masses.groupby(["checkpoint", "layer", "segment"], as_index=False)["mass"].mean()
    images = masses["image"].nunique()
    with style():
        fig = new_figure(10.5, 3.4)
        axes = fig.subplots(1, mean["checkpoint"].nunique(), sharey=True, squeeze=False)[0]
        for ax, (short, table) in zip(axes, mean.groupby("checkpoint", sort=False)):
            draw_attention_mass(ax, table)
            ax.set_title(f"{short}: where the level word is decided (mean of {images} "
                         f"image{'s' if images != 1 else ''})")
    save(fig, path, dpi=120)


def _stem(image: Any, index: int) -> str:
    if isinstance(image, (str, Path)):
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(image).stem)
        return stem or f"image_{index}"
    return f"image_{index}"


def _unique(name: str, taken: list[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate
