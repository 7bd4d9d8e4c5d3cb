"""Figures drawn from results: publication-ready matplotlib figures of Traces (and, through the ``draw_*``
functions, of any table or matrix of the same shape, such as averages over a dataset run).

Plotting reads results; it never computes them. Every figure function takes a :class:`~vlm_lens.Trace` (or two, for
:func:`compare`), reads it through the Trace's own public readers (``lens``, ``lens_targets``, ``attention``), and
returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state: safe in scripts, servers and
notebooks alike). ``path=`` or :func:`save` writes PNG, SVG or PDF by suffix.

=====================  ========================================================================================
:func:`latent_output`  layers x positions, the lens's top-1 token written in each cell, coloured by probability
:func:`topk`           the top-k candidates per layer at one position, the final output highlighted
:func:`target_words`   chosen words' probability (or rank) across layers
:func:`attention`      layer x context-token heatmap of one token's attention, segments marked
:func:`attention_mass` that attention summed by segment, per layer (stacked area)
:func:`patch_overlay`  attention or lens probability laid over the image's patch grid
:func:`compare`        any of the above for two traces, one shared scale, plus a difference panel
:func:`lens_kl`        KL to the model's output per layer, logit lens vs tuned lens (of a lens or a run's table)
=====================  ========================================================================================

Per head: :func:`attention_heads` (one attention heatmap per head) and :func:`head_mass` (every head's mass by
segment). Every figure of one trace reads the decision position by default (:mod:`vlm_lens.plot.reading`). Every
lens figure takes ``lens=``: None for the logit lens, or a lens of the trace's model (a
:class:`~vlm_lens.TunedLens`); its title names the lens.

And of a dataset run (means over samples; a RunResult, its folder, or the table):

==========================  ===================================================================================
:func:`run_attention_mass`  the query token's attention mass by segment per layer (stacked area)
:func:`run_image_profile`   layer x image-token-index heatmap of its attention on the image
:func:`run_patch_grid`      that attention on the image's patch grid at one layer (spatial families)
:func:`run_head_mass`       every head's mean attention mass by segment
:func:`run_first_top1`      the layer where the level becomes the lens's top-1, its distribution
:func:`run_lens_agreement`  per layer, how often the lens agrees with the answer (Wilson intervals)
:func:`run_segment_lines`   attention on the image vs the description per layer (t intervals)
:func:`run_instability`     how often the level changes under sampling, the lens's candidate sets
:func:`run_score_scatter`   Q-Align score against MOS, with SRCC / PLCC
:func:`compare_runs`        any of these for several runs (shared scales, differences, significant layers)
:func:`knockout_effects`    segment x layer window: mean effect of a knockout at the decision (runs side by side)
:func:`patching_curve`      per hidden index: mean effect of patching another checkpoint's residual stream
==========================  ===================================================================================

Example:
    >>> import tempfile, numpy as np, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> from vlm_lens.plot import latent_output, save
    >>> m = vl.load(tiny_llava(tempfile.mkdtemp(), layers=2))
    >>> t = vl.trace(m, np.zeros((32, 32, 3), np.uint8), "rate the quality of this image", generate=2)
    >>> fig = latent_output(t, positions="response", context=2)
    >>> fig.axes[0].get_label()
    'latent_output'
"""

from .accessor import TracePlots
from .attention import (
           attention,
           attention_mass,
           draw_attention,
           draw_attention_mass,
           draw_patch_grids,
           patch_overlay,
)
from .interventions import knockout_effects, patching_curve
from .latent import draw_grid, latent_output
from .heads import attention_heads, draw_head_mass, head_mass, run_head_mass
from .lens_kl import draw_lens_kl, lens_kl
from .pairs import compare
from .analyses_compared import compare_analyses
from .run_analyses import (
           run_first_top1,
           run_instability,
           run_lens_agreement,
           run_score_scatter,
           run_segment_lines,
)
from .run_figures import (
           compare_runs,
           run_attention_mass,
           run_image_profile,
           run_patch_grid,
)
from .style import new_figure, save
from .topk import draw_target_words, draw_topk, target_words, topk

__all__ = ["TracePlots", "attention", "attention_heads", "attention_mass", "compare", "compare_analyses",
           "compare_runs", "draw_attention", "draw_attention_mass", "draw_grid", "draw_head_mass", "draw_lens_kl",
           "draw_patch_grids", "draw_target_words", "draw_topk", "head_mass", "knockout_effects", "latent_output",
           "lens_kl", "new_figure", "patch_overlay", "patching_curve", "run_attention_mass", "run_first_top1",
           "run_head_mass", "run_image_profile", "run_instability", "run_lens_agreement", "run_patch_grid",
           "run_score_scatter", "run_segment_lines", "save", "target_words", "topk"]
