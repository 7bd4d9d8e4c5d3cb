"""Attention by segment: the per-sample split is the documented one, rows sum to 1 over segments, and the dataset
aggregate (batched run, samples of different lengths) equals a naive per-sample loop over unbatched traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_image
from forced_answers import forced_trace

from vlm_lens.biqa.answer import locate, segment_labels
from vlm_lens.biqa.attention import Attention, attention_mass
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, BIQA_SEGMENTS, QALIGN_PROMPT
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import Sample, from_images
from vlm_lens.runs.engine import run
from vlm_lens.runs.reducers import TraceRequest, trace_samples


def test_one_stage_answer_is_split_into_description_and_answer(models):
    m = models["mha"]
    t = forced_trace(m, random_image(1), "noisy and dark . the quality of the image is poor .")
    labels = segment_labels(t, locate(t))
    words = list(zip(t.tokens.text, labels))
    response = words[t.prompt_length:]
    assert [w for w, s in response if s == "description"] == ["noisy", "and", "dark", "."]
    assert [w for w, s in response if s == "answer"] == "the quality of the image is poor . </s>".split()
    assert [w for w, s in words if s == "instruction"] == "describe the quality of this image".split()
    assert labels.count("image") == len(t.spans["image"])
    assert {s for w, s in words[:t.prompt_length] if w in ("user", "assistant", "<s>")} == {"system"}


def test_rows_sum_to_one_over_segments_and_equal_the_rows(models):
    m = models["gqa"]
    t = forced_trace(m, random_image(2), "blurry . the quality of the image is bad .")
    table = attention_mass(t)
    sums = table.groupby(["layer", "head", "query"]).mass.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    assert set(table["query"]) == set(t.query_positions.tolist())
    layout = locate(t)
    labels = segment_labels(t, layout)
    one = attention_mass(t, query="decision")
    assert one["query"].unique().tolist() == [layout.decision_pos]
    row = t.attention[:, :, t.query_positions.tolist().index(layout.decision_pos)].double()
    for segment in BIQA_SEGMENTS:
        keys = [p for p, s in enumerate(labels) if s == segment]
        expected = row[..., keys].sum(-1).reshape(-1).numpy()
        np.testing.assert_allclose(one[one.segment == segment].mass.to_numpy(), expected, rtol=1e-12)
    level = attention_mass(t, query="level")
    assert level["query"].unique().tolist() == [layout.level_pos]
    with pytest.raises(VlmLensError, match="query='first'"):
        attention_mass(t, query="first")


def _naive(traces):
    """Mean segment mass, image profile (per-index counts) and base-grid map of the decision row, by loops."""
    n_layer, n_head = traces[0].attention.shape[:2]
    mass = torch.zeros(n_layer, n_head, len(BIQA_SEGMENTS), dtype=torch.float64)
    profiles, grids = [], []
    for t in traces:
        layout = locate(t)
        labels = segment_labels(t, layout)
        row = t.attention[:, :, t.query_positions.tolist().index(layout.decision_pos)].double()
        for j, segment in enumerate(BIQA_SEGMENTS):
            for p, s in enumerate(labels):
                if s == segment:
                    mass[..., j] += row[..., p]
        span = t.spans["image"]
        profiles.append(row[..., span.start:span.stop])
        block = span.layout[0]
        cells = [[row[..., span.start + block.offset + r * (block.cols + block.newline) + c]
                  for c in range(block.cols)] for r in range(block.rows)]
        grids.append(torch.stack([torch.stack(r, -1) for r in cells], -2))
    longest = max(p.shape[-1] for p in profiles)
    total, count = torch.zeros(n_layer, n_head, longest, dtype=torch.float64), torch.zeros(longest)
    for p in profiles:
        total[..., :p.shape[-1]] += p
        count[:p.shape[-1]] += 1
    return mass / len(traces), total / count, torch.stack(grids).mean(0), count


def test_dataset_mean_equals_naive_loop(models):
    m = models["next"]
    images = [random_image(30 + k, (30 + 11 * k, 64 - 8 * k)) for k in range(5)]
    request = TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, attention=True)
    alone = [trace_samples(m, [image], [str(k)], request, batch_size=1)[0][0] for k, image in enumerate(images)]
    assert len({len(t.spans["image"]) for t in alone}) > 1  # image spans of different lengths

    # the reducer over the very same traces is the loop, up to float64 summation order
    reducer = Attention()
    for k, t in enumerate(alone):
        reducer.update(Sample(k, str(k)), [t])
    mass, profile, grid, count = _naive(alone)
    tables = reducer.result()
    _check(tables, mass, profile, grid, count, atol=1e-12)

    # a batched run over samples of different lengths gives the same means
    result = run(m, from_images(images), [Attention()], batch_size=3, progress=False)
    _check({k.split(".", 1)[1]: v for k, v in result.tables.items()}, mass, profile, grid, count, atol=1e-5)
    assert result["attention.summary"].iloc[0].to_dict() == {"query": "decision", "n_samples": 5, "n_used": 5,
                                                             "n_no_query": 0}
    per_sample = result["attention.samples"].groupby(["layer", "segment"]).mass.mean().unstack()[list(BIQA_SEGMENTS)]
    np.testing.assert_allclose(per_sample.to_numpy(), mass.mean(1).numpy(), atol=1e-5)


def _check(tables, mass, profile, grid, count, atol):
    segments = tables["segments"]
    n_layer, n_head = mass.shape[:2]
    assert segments[["layer", "head", "segment"]].values.tolist()[:len(BIQA_SEGMENTS)] == \
        [[1, 0, s] for s in BIQA_SEGMENTS]  # layer = decoder block, 1-based
    np.testing.assert_allclose(segments.mass.to_numpy(), mass.reshape(-1).numpy(), atol=atol, rtol=0)
    prof = tables["image_profile"]
    np.testing.assert_allclose(prof.mass.to_numpy(), profile.reshape(-1).numpy(), atol=atol, rtol=0)
    assert prof.n.to_numpy()[:len(count)].tolist() == count.int().tolist()
    cells = tables["grid"]
    assert cells.grid.unique().tolist() == [f"{grid.shape[-2]}x{grid.shape[-1]}"]
    np.testing.assert_allclose(cells.mass.to_numpy(), grid.reshape(-1).numpy(), atol=atol, rtol=0)


def test_samples_without_a_level_are_counted_not_averaged(models):
    m = models["mha"]
    reducer = Attention()
    reducer.update(Sample(0, "a"), [forced_trace(m, random_image(3), "sharp . the quality of the image is good .")])
    reducer.update(Sample(1, "b"), [forced_trace(m, random_image(4), "cat dog")])
    tables = reducer.result()
    assert tables["summary"].iloc[0][["n_samples", "n_used", "n_no_query"]].tolist() == [2, 1, 1]
    assert tables["segments"].n.eq(1).all()
    assert pd.Series(tables["samples"]["id"]).unique().tolist() == ["a"]
