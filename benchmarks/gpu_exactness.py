"""The exactness checks of ``benchmarks/gpu.py``: the test suite's invariants, again, where the model really runs.

The test suite checks these on the CPU in float32 with tiny models. On a GPU the forward runs other kernels (SDPA's
flash / memory-efficient attention, cuBLAS) and, for real models, in bf16; and hidden states kept on the host
travel by asynchronous copies there and nowhere else. So the same invariants are checked again on the device, on a
model of the real width (``Shape.exact_layers`` layers), in float32 and in bf16 (the same weights, rounded):

- **attention rows fp32**: ``vl.trace`` rows == HF eager's ``output_attentions`` (same model, decoder switched to
  eager) to 1e-5, the promise of docs/methods.md;
- **attention rows bf16**: within bf16 rounding of eager: the rows of the bf16 model are no further from the
  float32 eager rows (the same weights unrounded) than eager's own bf16 rows are, in relative norm (a factor of
  1.25 of slack); the gap between the two bf16 rows is reported beside it;
- **lens at the last layer == logits**: ``Trace.lens`` of the last hidden index against the softmax of the model's
  own logits (top-5 probabilities; fp32 to 1e-5, bf16 to 1e-2) and the same top-1 token;
- **batch == alone**: three prompts of different lengths, left padded in one batch, against each traced alone
  (hidden states, rows, logits). fp32, with 4 generated tokens: relative norm 1e-5. bf16, on the prompts (greedy
  bf16 answers may part at near-ties, which is not what this checks): padding changes the kernels' rounding, so
  the batched bf16 traces must be no further from the bf16 ones alone than those are from the fp32 ones alone
  (the same weights unrounded), with the same 1.25 of slack;
- **host copies**: ``Keep(device="cpu")`` (and with ``dtype=float32``) gives bit for bit what ``Keep()`` keeps on the
  device (when two runs on the device agree bit for bit; else within their own spread);
- **knockout vs eager reference**: the place for the interventions check (see :func:`check_knockout`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

import vlm_lens as vl

SECTION = "exactness"
#: Query positions of the row checks: the first token, an image token, a text token, the last two positions.
QUERIES = [0, 7, -20, -2, -1]
BF16_SLACK = 1.25


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def per_layer(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Max abs difference per layer of two ``[layer, ...]`` tensors: a bug shows from layer 0 on, rounding drift
    (the eager reference runs its own forward) grows with depth."""
    return [max_abs(x, y) for x, y in zip(a, b)]


def eager_rows(m: vl.LensModel, image: Any, text: str, queries: list[int]) -> torch.Tensor:
    """``[layer, head, query, key]`` float32 weights of HF eager attention (decoder switched to eager, then back)."""
    inputs = {k: v.to(m.device) if isinstance(v, torch.Tensor) else v
              for k, v in m.processor(images=image, text=text, return_tensors="pt").items()}
    m.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = m.model(**inputs, output_attentions=True, use_cache=False)
    finally:
        m.model.set_attn_implementation({"text_config": "sdpa"})
    return torch.stack([a[0][:, queries] for a in out.attentions]).float().cpu()


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights rounded to bf16, buffers left as they are: what loading a bf16 checkpoint gives (rotary
    frequencies stay float32; ``model.to(torch.bfloat16)`` would round them too)."""
    twin = copy.deepcopy(model)
    for parameter in twin.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return twin


def batch_against_alone(m: vl.LensModel, images: list, prompts: list[str], generate: int) -> dict[str, float]:
    """Largest relative norm of (batched - alone) of each of hidden, attention, logits over the samples."""
    batch = vl.trace(m, images, prompts, generate=generate)
    worst = {"hidden": 0.0, "attention": 0.0, "logits": 0.0}
    for b, image, prompt in zip(batch, images, prompts):
        one = vl.trace(m, image, prompt, generate=generate)
        if b.response_ids != one.response_ids:
            raise AssertionError(f"the batched answer {b.response_ids} is not the one alone {one.response_ids}")
        for name in worst:
            worst[name] = max(worst[name], rel(getattr(b, name), getattr(one, name)))
    return worst


def run_exactness(report, build: Callable[..., vl.LensModel], images: list, prompt: str, prompts: list[str]) -> None:
    """All checks, each recorded on its own (a check that raises is recorded as failed; the others still run)."""
    report.section(SECTION)
    m32 = build(torch.float32)
    m16 = vl.wrap(bf16_copy(m32.model), m32.processor, name=m32.name)
    image = images[0]
    report.section(SECTION, model=f"{m32.adapter.n_layers} layers of the shape's width; fp32 and the same "
                                  "weights in bf16")
    rows: dict[str, torch.Tensor] = {}

    with report.measure(SECTION, "attention rows fp32 vs eager") as entry:
        t = vl.trace(m32, image, prompt, keep=vl.Keep(query_positions=QUERIES))
        text, queries = t.meta["rendered_prompt"], t.query_positions.tolist()
        rows["ours32"], rows["eager32"] = t.attention, eager_rows(m32, image, text, queries)
        value = max_abs(rows["ours32"], rows["eager32"])
        entry.update(metric="max |rows - eager|", value=value, tolerance=1e-5, passed=value <= 1e-5,
                     positions=len(t.tokens), per_layer=per_layer(rows["ours32"], rows["eager32"]))

    with report.measure(SECTION, "attention rows bf16 vs eager") as entry:
        t = vl.trace(m16, image, prompt, keep=vl.Keep(query_positions=QUERIES))
        eager16 = eager_rows(m16, image, t.meta["rendered_prompt"], t.query_positions.tolist())
        truth = rows.get("eager32")
        if truth is None:
            raise RuntimeError("the fp32 eager rows are missing (the fp32 check failed)")
        ours, theirs = rel(t.attention, truth), rel(eager16, truth)
        entry.update(metric="||rows_bf16 - eager_fp32|| / ||eager_fp32|| over eager_bf16's", value=ours / theirs,
                     tolerance=BF16_SLACK, passed=ours <= BF16_SLACK * theirs, rows_bf16_error=ours,
                     eager_bf16_error=theirs, max_abs_vs_eager_bf16=max_abs(t.attention, eager16),
                     per_layer=per_layer(t.attention, eager16))

    for label, m, tolerance in (("fp32", m32, 1e-5), ("bf16", m16, 1e-2)):
        with report.measure(SECTION, f"lens at last layer == logits {label}") as entry:
            t = vl.trace(m, image, prompt, keep=vl.Keep(query_positions=[-3, -2, -1]))
            lens = t.lens(topk=5, layers=[m.adapter.n_layers])
            probs = torch.tensor(lens["prob"].to_numpy()).reshape(3, 5)
            ids = torch.tensor(lens["token_id"].to_numpy()).reshape(3, 5)
            ref = torch.softmax(t.logits.double(), -1).topk(5)
            value = max_abs(probs, ref.values)
            same_top1 = bool(torch.equal(ids[:, 0], ref.indices[:, 0]))
            entry.update(metric="max |lens top-5 probs - softmax(logits)|", value=value, tolerance=tolerance,
                         passed=value <= tolerance and same_top1, same_top1=same_top1)

    names = ("hidden", "attention", "logits")
    with report.measure(SECTION, "batch == alone fp32") as entry:
        worst = batch_against_alone(m32, images[:3], prompts, generate=4)
        value = max(worst.values())
        entry.update(metric="max relative norm of (batched - alone)", value=value, tolerance=1e-5,
                     passed=value <= 1e-5, **{f"{k}_rel": v for k, v in worst.items()})

    with report.measure(SECTION, "batch == alone bf16") as entry:
        worst = batch_against_alone(m16, images[:3], prompts, generate=0)
        rounding = {name: 0.0 for name in names}
        for image_k, prompt_k in zip(images[:3], prompts):
            a16, a32 = vl.trace(m16, image_k, prompt_k), vl.trace(m32, image_k, prompt_k)
            for name in names:
                rounding[name] = max(rounding[name], rel(getattr(a16, name), getattr(a32, name)))
        value = max(worst[name] / rounding[name] for name in names)
        entry.update(metric="max over hidden/rows/logits of rel(batched, alone) / rel(alone bf16, alone fp32)",
                     value=value, tolerance=BF16_SLACK, passed=value <= BF16_SLACK,
                     **{f"{k}_rel": v for k, v in worst.items()},
                     **{f"{k}_bf16_rounding": v for k, v in rounding.items()})

    with report.measure(SECTION, "host copies == device bf16") as entry:
        keep = dict(query_positions=[-2, -1])
        on_device = vl.trace(m16, images[:3], prompts, keep=vl.Keep(**keep))
        again = vl.trace(m16, images[:3], prompts, keep=vl.Keep(**keep))
        host = vl.trace(m16, images[:3], prompts, keep=vl.Keep(device="cpu", **keep))
        host32 = vl.trace(m16, images[:3], prompts, keep=vl.Keep(device="cpu", dtype=torch.float32, **keep))
        spread = max(max_abs(a.hidden, b.hidden) for a, b in zip(on_device, again))
        value = max(max(max_abs(h.hidden, d.hidden), max_abs(h32.hidden, d.hidden.float()))
                    for h, h32, d in zip(host, host32, on_device))
        placed = {str(t.hidden.device) for t in host + host32}
        entry.update(metric="max |hidden kept on host - kept on device|", value=value, tolerance=spread,
                     passed=value <= spread and placed == {"cpu"} and all(t.hidden.dtype == torch.float32
                                                                       for t in host32),
                     device_run_spread=spread, host_devices=sorted(placed))

    check_knockout(report, m32, m16)


def check_knockout(report, m32: vl.LensModel, m16: vl.LensModel) -> None:
    """THE PLACE FOR THE KNOCKOUT CHECK, to be filled once the interventions issue has landed (``vl.knockout``).

    What belongs here: a knockout (attention from chosen query positions to the image span removed inside the
    project's attention function, SDPA kept) against its hand-written reference — the plain HF model with eager
    attention, a hand-edited mask and forward hooks — on this device in fp32 (to ~1e-5) and in bf16 (relative
    norm within bf16 rounding, as the rows check above), and generation under the knockout against a manual
    greedy loop. Until then it is recorded as pending, not as passed.
    """
    report.skip(SECTION, "knockout vs eager reference", "waits for the interventions issue (vl.knockout)",
                status="pending")
