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
- **knockout vs eager reference**: a knockout (text after the image cut from the image in every layer) against the
  plain model with eager attention and hand-edited masks (fp32 rows 1e-5, hidden / logits 1e-4 relative; bf16 within
  rounding), and generation under it against a greedy loop of full eager forwards.
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

    check_knockout(report, m32, m16, image, prompt)


def check_knockout(report, m32: vl.LensModel, m16: vl.LensModel, image: Any, prompt: str) -> None:
    """A knockout (the text after the image may not read the image, in every decoder layer) against its
    hand-written reference: the same model with eager attention, each attention module's additive mask edited by a
    forward pre-hook at the knocked (query, key) entries. fp32: rows to 1e-5, hidden states and logits to 1e-4
    relative; bf16: the knocked trace's error against the fp32 reference within ``BF16_SLACK`` of eager bf16's own;
    and generation under the knockout == a greedy loop of full eager forwards with the masks edited by hand."""
    for label, m in (("fp32", m32), ("bf16", m16)):
        with report.measure(SECTION, f"knockout vs eager reference {label}") as entry:
            plain = vl.trace(m, image, prompt, keep=vl.Keep(attention=False))
            queries, keys = _knocked(plain)
            n = len(plain.tokens)
            t = vl.trace(m, image, prompt, keep=vl.Keep(query_positions=list(range(n))),
                         intervene=[vl.knockout(queries, keys, layers=None)])
            ref = knocked_eager(m, image, plain.meta["rendered_prompt"], [], queries, keys)
            if label == "fp32":
                rows, hidden, logits = (max_abs(t.attention, ref["rows"]), rel(t.hidden, ref["hidden"]),
                                        rel(t.logits, ref["logits"]))
                changed = rel(plain.logits[-1:], ref["logits"][-1:])
                entry.update(metric="max |rows - eager|; rel hidden, logits", value=rows, tolerance=1e-5,
                             passed=rows <= 1e-5 and hidden <= 1e-4 and logits <= 1e-4 and changed > 1e-3,
                             hidden_rel=hidden, logits_rel=logits, plain_vs_knocked_logits_rel=changed,
                             queries=len(queries), keys=len(keys))
                truth = ref
            else:
                truth = knocked_eager(m32, image, plain.meta["rendered_prompt"], [], queries, keys)
                ours, theirs = rel(t.logits, truth["logits"]), rel(ref["logits"], truth["logits"])
                entry.update(metric="||logits_bf16 - eager_fp32|| / ||eager_fp32|| over eager_bf16's",
                             value=ours / theirs, tolerance=BF16_SLACK, passed=ours <= BF16_SLACK * theirs,
                             logits_bf16_error=ours, eager_bf16_error=theirs,
                             rows_vs_eager_bf16=max_abs(t.attention, ref["rows"]))

    with report.measure(SECTION, "generation under knockout == greedy eager loop fp32") as entry:
        steps = 6
        plain = vl.trace(m32, image, prompt, keep=vl.Keep(attention=False))
        queries, keys = _knocked(plain)
        prompt_length = plain.prompt_length
        ko = vl.knockout(queries + ["response"], keys, layers=None)
        t = vl.trace(m32, image, prompt, generate=steps, intervene=[ko], keep=vl.Keep(attention=False))
        answer: list[int] = []
        for _ in range(steps):
            length = prompt_length + len(answer)
            out = knocked_eager(m32, image, plain.meta["rendered_prompt"], answer,
                                queries + list(range(prompt_length, length)), keys, rows=False)
            last = out["logits"][-1].clone()
            last[m32.adapter.placeholder_ids] = float("-inf")
            answer.append(int(last.argmax()))
            if answer[-1] in m32.adapter.eos_token_ids:
                break
        free = vl.trace(m32, image, prompt, generate=steps, keep=vl.Keep(attention=False))
        entry.update(metric="answer == greedy eager loop", value=float(t.response_ids == answer), tolerance=1.0,
                     passed=t.response_ids == answer, answer=answer, traced=t.response_ids,
                     differs_from_plain_answer=free.response_ids != answer)


def _knocked(trace: "vl.Trace") -> tuple[list[int], list[int]]:
    """``(queries, keys)``: every text position after the image, and the image's positions."""
    image = trace.spans["image"]
    return list(range(image.stop, len(trace.tokens))), list(range(image.start, image.stop))


def knocked_eager(m: vl.LensModel, image: Any, text: str, answer: list[int], queries: list[int], keys: list[int],
                  rows: bool = True) -> dict[str, torch.Tensor]:
    """The reference: the HF model with eager attention on ``text`` + ``answer``, every decoder layer's additive mask
    closed by hand at ``(queries, keys)``; hidden states by forward hooks, logits, eager attention weights."""
    inputs = {k: v.to(m.device) if isinstance(v, torch.Tensor) else v
              for k, v in m.processor(images=image, text=text, return_tensors="pt").items()}
    if answer:
        tail = torch.tensor([answer], dtype=inputs["input_ids"].dtype, device=m.device)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tail)], 1)
    recorded: dict[int, torch.Tensor] = {}

    def close(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = kwargs["attention_mask"]
        edited = mask.expand(mask.shape[0], 1, -1, -1).clone()
        edited[0, 0, torch.tensor(queries)[:, None], torch.tensor(keys)[None, :]] = torch.finfo(edited.dtype).min
        return args, {**kwargs, "attention_mask": edited}

    def keep(index: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            recorded[index] = (output[0] if isinstance(output, tuple) else output)[0].detach().float().cpu()
        return hook

    layers = m.adapter.layers
    handles = [layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: recorded.__setitem__(0, (args[0] if args else kwargs["hidden_states"])[0]
                                                         .detach().float().cpu()), with_kwargs=True)]
    handles += [m.adapter.attention_module(layer).register_forward_pre_hook(close, with_kwargs=True)
                for layer in layers]
    handles += [layer.register_forward_hook(keep(i + 1)) for i, layer in enumerate(layers)]
    m.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = m.model(**inputs, output_attentions=rows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        m.model.set_attn_implementation({"text_config": "sdpa"})
    result = {"logits": out.logits[0].float().cpu(),
              "hidden": torch.stack([recorded[i] for i in range(len(layers) + 1)])}
    if rows:
        result["rows"] = torch.stack([a[0] for a in out.attentions]).float().cpu()
    return result
