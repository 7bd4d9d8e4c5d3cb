"""``TunedLens.fit``: fit one affine translator per hidden index by streaming a dataset, like a run.

Why it lives here and not beside the lens: fitting needs what a run has — a dataset read one batch at a time (memory
does not grow with its size), checkpoints that a killed fit resumes from, a folder that refuses another model's or
other settings' state, and the ranks of ``torchrun`` / ``accelerate launch``. The lens itself and its reading are in
:mod:`vlm_lens.tracing.tuned_lens`; this module is attached there as :meth:`~vlm_lens.TunedLens.fit` on import.

What is minimised (Belrose et al., 2023): for each sample, the prompt is traced with its greedy answer, and for every
position ``p`` of prompt and answer and every translated hidden index ``l``,
``KL(softmax(z_p) || softmax(lens_l(h_{l,p})))``, where ``z_p`` are the model's own logits (the lens at the last
hidden index). The loss of a step is the sum over layers of the mean over the batch's positions; translators start at
the identity (the logit lens) and take Adam steps with a learning rate decaying linearly to zero. Gradients reach the
translators only (``torch.autograd.grad``): the model's parameters, their ``.grad`` and its hooks are left as they
were.

Determinism and ranks: the order of samples is a seeded permutation per epoch, cut into global batches of
``batch_size`` samples; with ``W`` ranks, rank ``r`` traces samples ``r, r + W, ...`` of each global batch, and the
ranks sum their gradients and position counts before each step, so every rank takes the same step and the result
does not depend on ``W`` (up to floating-point summation order). ``out=`` holds ``fit.json`` (fingerprint, status),
``state.safetensors`` (translators, Adam's moments, the step; replaced atomically every ``checkpoint_every``
samples) and, when done, the lens itself (``lens.safetensors`` + ``lens.json``): a finished ``out`` is loaded, not
refitted, and a killed fit resumes to the same lens.

Example:
    >>> lens = vl.TunedLens.fit(m, vl.datasets.from_csv("koniq_train.csv"), out="lenses/llava")   # doctest: +SKIP
    >>> lens.held_out                                          # layer, logit, tuned (KL, nats)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import ImageError, VlmLensError
from ..tracing.loading import LensModel
from ..tracing.logit_lens import LogitLens
from ..tracing.tuned_lens import TunedLens
from .checkpoint import atomic_write, model_fingerprint, write_json
from .datasets import Dataset, Sample
from .folder import claim, read_run_info, stored_info
from .engine import _barrier, _distributed
from .lens_kl import default_prompt, kl_sums
from .reducers import TraceRequest, trace_samples

if TYPE_CHECKING:
    from ..tracing.record import Trace

__all__ = ["fit"]

#: The fit's info file in ``out=``: ``{"status": "running" | "done", "fingerprint": {...}}``.
FIT_FILE = "fit.json"

FORMAT_VERSION = 1
#: Bytes of float32 logits (all translated layers of a chunk of positions) held at once while fitting.
FIT_CHUNK_BYTES = 128 * 2**20


def fit(model: LensModel, dataset: Dataset, *, prompt: str | None = None, generate: int = 32,
        layers: Sequence[int] | None = None, held_out: float | Dataset = 0.1, epochs: int = 1, batch_size: int = 8,
        lr: float = 1e-3, seed: int = 0, system: str | None = None, trace_batch: int | None = None,
        out: str | Path | None = None, checkpoint_every: int = 64, progress: bool = True,
        overwrite: bool = False) -> TunedLens:
    """Fit a tuned lens of ``model`` on the images of ``dataset``.

    Args:
        model: From :func:`vlm_lens.load`; left exactly as it was.
        dataset: Images (from :mod:`vlm_lens.datasets`); scores are not used.
        prompt: The question asked of every image (default: the runs' quality question, registered by
            ``vlm_lens.biqa``).
        generate: Tokens of the greedy answer traced after the prompt (0: the prompt only).
        layers: Hidden indices that get a translator (default: all below the last, ``0..L-1``).
        held_out: The fraction of ``dataset`` (its last samples) kept out of fitting to measure the lens, or a
            separate dataset for that; 0 for none. Its KL per layer, logit vs tuned, is :attr:`TunedLens.held_out`.
        epochs: Passes over the fitting samples (each pass traces them again: memory stays that of one trace group).
        batch_size: Samples per step (traced together; every position of each counts).
        lr: Adam's initial learning rate (decays linearly to 0 over the steps).
        seed: Seed of the sample order.
        system: A system prompt, or None.
        trace_batch: Samples traced in one forward (default ``batch_size``): several steps' samples at once generate
            faster on small models; memory holds this many samples' residual streams.
        out: Folder for checkpoints and the finished lens; a finished fit there is loaded, an unfinished one resumed,
            one of another model or other settings refused. None: in memory only.
        checkpoint_every: Samples between checkpoints (rounded up to whole batches).
        progress: Show a progress bar (rank 0 only).
        overwrite: Discard a fit already in ``out`` first.

    Returns:
        The fitted :class:`~vlm_lens.TunedLens` (its ``info`` holds the settings, the dataset and the held-out KL).

    Raises:
        VlmLensError: Bad arguments, a dataset without images, or ``out`` holding another fit.

    Example:
        >>> lens = vl.TunedLens.fit(m, ds, generate=48, epochs=2, out="lenses/one-stage")    # doctest: +SKIP
    """
    settings = _check(model, dataset, prompt, generate, layers, held_out, epochs, batch_size, lr, seed, system,
                      checkpoint_every, batch_size if trace_batch is None else trace_batch)
    train, evaluation = _split(dataset, held_out)
    rank, world, owned = _distributed(model)
    try:
        fingerprint = {"format_version": FORMAT_VERSION, "model": model_fingerprint(model),
                       "dataset": dataset.describe(), "held_out": _describe_held_out(held_out), "settings": settings}
        folder = Path(out) if out is not None else None
        if folder is not None:
            finished = _prepare(folder, fingerprint, model, overwrite, rank, world)
            if finished is not None:
                return finished
        lens = TunedLens(model, settings["layers"])
        request = TraceRequest(settings["prompt"], None, generate, system=system, hidden=True, all_positions=True)
        log = _train(model, lens, dataset, train, request, settings, folder, checkpoint_every, progress, rank, world)
        measured = _evaluate(model, lens, held_out if isinstance(held_out, Dataset) else dataset, evaluation, request,
                             settings["trace_batch"], rank, world)
        lens.info.update(settings=settings, dataset=dataset.describe(), training=log,
                         held_out={**measured, "source": _describe_held_out(held_out)} if measured else {})
        if folder is not None:
            if rank == 0:
                lens.save(folder)
                info = read_run_info(folder, FIT_FILE)
                write_json(folder / FIT_FILE, {**info, "status": "done"})
            _barrier(world)
        return lens
    finally:
        if owned:
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------------ checks
def _check(model: Any, dataset: Any, prompt: str | None, generate: Any, layers: Any, held_out: Any, epochs: Any,
           batch_size: Any, lr: Any, seed: Any, system: Any, checkpoint_every: Any, trace_batch: Any) -> dict[str, Any]:
    if not isinstance(model, LensModel):
        raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...), got {type(model).__name__}.")
    if not isinstance(dataset, Dataset):
        raise VlmLensError(f"dataset: expected a vl.datasets.Dataset (from_csv, from_json, from_images), got "
                           f"{type(dataset).__name__}.")
    without = [s.id for s in dataset if s.image is None]
    if without:
        raise VlmLensError(f"dataset: {len(without)} of its {len(dataset)} samples have no image (e.g. "
                           f"{without[:3]}); a tuned lens of a VLM is fitted on the residual stream of image + "
                           "prompt. Pass a dataset of images (vl.datasets.from_images, from_csv, from_json).")
    for name, value, low in (("generate", generate, 0), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                             ("checkpoint_every", checkpoint_every, 1), ("seed", seed, 0),
                             ("trace_batch", trace_batch, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise VlmLensError(f"{name}={value!r}: expected an integer >= {low}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise VlmLensError(f"lr={lr!r}: expected a learning rate > 0 (e.g. 1e-3).")
    if isinstance(held_out, bool) or not isinstance(held_out, (Dataset, int, float)) or (
            not isinstance(held_out, Dataset) and not 0 <= held_out < 1):
        raise VlmLensError(f"held_out={held_out!r}: expected a fraction in [0, 1) of the dataset (its last samples) "
                           "or a vl.datasets.Dataset of held-out images.")
    if isinstance(held_out, Dataset):
        _check(model, held_out, prompt, generate, layers, 0.0, epochs, batch_size, lr, seed, system, checkpoint_every,
               trace_batch)
    question = default_prompt() if prompt is None else prompt
    TraceRequest(question, None, generate, system=system)  # a bad prompt fails now, not at the first batch
    n = model.adapter.n_layers
    chosen = list(range(n)) if layers is None else list(layers) if hasattr(layers, "__iter__") else layers
    if not isinstance(chosen, list) or not chosen or len(set(chosen)) != len(chosen) or any(
            isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n for l in chosen):
        raise VlmLensError(f"layers={layers!r}: expected distinct hidden indices in 0..{n - 1} (index {n} reads "
                           "through the model's own head, without a translator), or None for all of them.")
    return {"prompt": question, "generate": generate, "system": system, "layers": sorted(chosen), "epochs": epochs,
            "batch_size": batch_size, "trace_batch": trace_batch, "lr": float(lr), "seed": seed}


def _split(dataset: Dataset, held_out: float | Dataset) -> tuple[list[Sample], list[Sample]]:
    """Fitting samples and held-out samples (the last ``ceil(held_out * n)`` of ``dataset``, or another dataset)."""
    samples = list(dataset)
    if isinstance(held_out, Dataset):
        return samples, list(held_out)
    n_out = math.ceil(held_out * len(samples)) if held_out > 0 else 0
    if n_out >= len(samples):
        raise VlmLensError(f"held_out={held_out}: keeps all {len(samples)} samples out of fitting; lower it, or pass "
                           "a separate held-out dataset.")
    return samples[:len(samples) - n_out], samples[len(samples) - n_out:]


def _describe_held_out(held_out: float | Dataset) -> Any:
    return held_out.describe() if isinstance(held_out, Dataset) else float(held_out)


def _prepare(folder: Path, fingerprint: dict, model: LensModel, overwrite: bool, rank: int,
             world: int) -> TunedLens | None:
    """Check (and create) ``out``; return the finished lens there, if it is this fit's."""
    if overwrite and rank == 0:
        (folder / FIT_FILE).unlink(missing_ok=True)
        for name in ("state.safetensors", "lens.safetensors", "lens.json"):
            (folder / name).unlink(missing_ok=True)
    _barrier(world)
    existing = stored_info(folder, FIT_FILE, fingerprint, "a tuned-lens fit of another model or with other settings",
                           "the stored fit")
    if existing is not None and existing.get("status") == "done":
        return TunedLens.load(folder, model)
    if rank == 0:
        claim(folder, FIT_FILE, fingerprint)
    _barrier(world)
    return None


# ------------------------------------------------------------------------------------------------------ fitting
def _batches(train: list[Sample], settings: dict) -> list[list[Sample]]:
    """Every global batch of the fit, in order: a seeded permutation per epoch, cut into ``batch_size``."""
    out = []
    size = settings["batch_size"]
    for epoch in range(settings["epochs"]):
        order = np.random.default_rng([settings["seed"], epoch]).permutation(len(train))
        out += [[train[i] for i in order[s:s + size]] for s in range(0, len(train), size)]
    return out


def _train(model: LensModel, lens: TunedLens, dataset: Dataset, train: list[Sample], request: TraceRequest,
           settings: dict, folder: Path | None, checkpoint_every: int, progress: bool, rank: int,
           world: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    batches = _batches(train, settings)
    optimizer = torch.optim.Adam([lens.weight, lens.bias], lr=settings["lr"])
    state = {"done": 0, "skipped": [], "losses": []}
    if folder is not None:
        _load_state(folder, lens, optimizer, state)
    every = -(-checkpoint_every // settings["batch_size"])
    # Steps whose samples are traced in one forward, on a fixed grid: a resumed fit traces the same groups.
    group = max(1, settings["trace_batch"] // settings["batch_size"])
    bar = tqdm(total=len(batches), initial=state["done"], unit="step", desc="TunedLens.fit",
               disable=not progress or rank != 0)
    for first in range(state["done"] // group * group, len(batches), group):
        steps = range(max(first, state["done"]), min(first + group, len(batches)))
        traced, skipped = _trace(model, dataset, [s for b in batches[first:first + group] for s in b[rank::world]],
                                 request, settings["trace_batch"])
        for step in steps:
            mine = [traced[s.id] for s in batches[step][rank::world] if s.id in traced]
            state["skipped"] += [s.id for s in batches[step][rank::world] if s.id in skipped]
            loss = _step(model, lens, optimizer, mine, settings["lr"] * (1 - step / len(batches)), world)
            state["losses"].append(loss)
            state["done"] = step + 1
            bar.update()
            bar.set_postfix(kl=f"{loss:.4f}")
            if folder is not None and rank == 0 and (state["done"] % every == 0 or state["done"] == len(batches)):
                _save_state(folder, lens, optimizer, state)
    bar.close()
    losses = state["losses"]
    window = max(1, min(10, len(losses) // 2))
    return {"steps": len(batches), "samples": len(train), "skipped": sorted(set(state["skipped"])),
            "kl_first": float(np.mean(losses[:window])) if losses else None,
            "kl_last": float(np.mean(losses[-window:])) if losses else None}


def _trace(model: LensModel, dataset: Dataset, samples: list[Sample], request: TraceRequest,
           batch_size: int) -> tuple[dict[str, "Trace"], set[str]]:
    """The traces of ``samples`` by sample id, and the ids whose images could not be read."""
    images, kept, skipped = [], [], set()
    for sample in samples:
        try:
            images.append(dataset.load_image(sample))
            kept.append(sample)
        except ImageError:
            skipped.add(sample.id)
    if not kept:
        return {}, skipped
    traced = trace_samples(model, images, [s.id for s in kept], request, batch_size)
    return {s.id: t[0] for s, t in zip(kept, traced)}, skipped


def _step(model: LensModel, lens: TunedLens, optimizer: torch.optim.Optimizer, traces: list["Trace"], lr: float,
          world: int) -> float:
    """One Adam step on the KL summed over translated layers, averaged over the global batch's positions; returns
    that loss per translated layer (mean over layers)."""
    device = lens.weight.device
    count = torch.tensor([float(sum(len(t.positions) for t in traces))], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(count)
    grads = [torch.zeros_like(lens.weight), torch.zeros_like(lens.bias)]
    total = torch.zeros(1, dtype=torch.float64, device=device)
    if traces and float(count) > 0:
        for part in _chunks(torch.cat([t.hidden.transpose(0, 1) for t in traces]), lens):
            kl = _kl(model, lens, part)  # [pos, translated layer]
            loss = kl.sum() / float(count)
            for g, d in zip(grads, torch.autograd.grad(loss, [lens.weight, lens.bias])):
                g += d
            total += kl.detach().double().sum()
    if world > 1:
        for tensor in (*grads, total):
            torch.distributed.all_reduce(tensor)
    for param, grad in zip((lens.weight, lens.bias), grads):
        param.grad = grad
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total) / max(float(count), 1.0) / len(lens.layers)


def _chunks(hidden: torch.Tensor, lens: TunedLens):
    """``[pos, layer, d_model]`` in chunks of positions whose logits over every translated layer fit the budget."""
    rows = max(1, FIT_CHUNK_BYTES // (4 * lens.vocab_size * (len(lens.layers) + 1) * 4))
    for start in range(0, hidden.shape[0], rows):
        yield hidden[start:start + rows]


def _kl(model: LensModel, lens: TunedLens, hidden: torch.Tensor) -> torch.Tensor:
    """``[pos, layer, d_model]`` (every hidden index) -> ``[pos, translated layer]`` KL(model || tuned lens)."""
    n = model.adapter.n_layers
    with torch.no_grad():
        target = torch.log_softmax(LogitLens(model.adapter).logits(hidden[:, n]), -1)
    translated = lens.translate_all(hidden[:, lens.layers])
    head = model.adapter.output_head.weight
    logits = model.adapter.unembed(model.adapter.final_norm(translated.to(head.dtype))).float()
    target = target.to(logits.device)
    return (target.exp()[:, None] * (target[:, None] - torch.log_softmax(logits, -1))).sum(-1)


def _evaluate(model: LensModel, lens: TunedLens, dataset: Dataset, samples: list[Sample], request: TraceRequest,
              batch_size: int, rank: int, world: int) -> dict[str, Any]:
    """The KL per hidden index of the logit lens and of ``lens`` on the held-out samples (summed over ranks)."""
    sums = {"logit": torch.zeros(model.adapter.n_layers + 1, dtype=torch.float64),
            "lens": torch.zeros(model.adapter.n_layers + 1, dtype=torch.float64),
            "positions": torch.zeros((), dtype=torch.float64), "samples": torch.zeros((), dtype=torch.float64)}
    batches = [samples[s:s + batch_size] for s in range(0, len(samples), batch_size)]
    for batch in batches[rank::world]:
        traced, _ = _trace(model, dataset, batch, request, batch_size)
        traces = list(traced.values())
        if traces:
            part = kl_sums(traces, lens)
            for key in ("logit", "lens", "positions"):
                sums[key] += part[key]
            sums["samples"] += len(traces)
    if world > 1:
        for key, value in sums.items():
            moved = value.to(model.device)
            torch.distributed.all_reduce(moved)
            sums[key] = moved.cpu()
    positions = float(sums["positions"])
    if positions == 0:
        return {}
    return {"layer": list(range(model.adapter.n_layers + 1)),
            "logit": [float(v) for v in sums["logit"] / positions],
            "tuned": [float(v) for v in sums["lens"] / positions],
            "positions": int(positions), "samples": int(sums["samples"])}


# -------------------------------------------------------------------------------------------------- checkpoints
def _save_state(folder: Path, lens: TunedLens, optimizer: torch.optim.Optimizer, state: dict) -> None:
    tensors = {"weight": lens.weight.detach(), "bias": lens.bias.detach()}
    for k, param in enumerate((lens.weight, lens.bias)):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"adam/{k}/{key}"] = value.detach().reshape(-1) if value.ndim == 0 else value.detach()
    info = {"format_version": FORMAT_VERSION, **state}
    atomic_write(folder / "state.safetensors", lambda p: save_file(
        {k: v.cpu().contiguous() for k, v in tensors.items()}, str(p), metadata={"state": json.dumps(info)}))


def _load_state(folder: Path, lens: TunedLens, optimizer: torch.optim.Optimizer, state: dict) -> None:
    path = folder / "state.safetensors"
    for temp in folder.glob(".*.tmp"):  # a write cut short by a kill
        temp.unlink()
    if not path.exists():
        return
    with safe_open(str(path), "pt") as handle:
        info = json.loads(handle.metadata()["state"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - a safetensors handle
    if info.get("format_version") != FORMAT_VERSION:
        raise VlmLensError(f"{path}: checkpoint format {info.get('format_version')} is not {FORMAT_VERSION}; fit "
                           "again in a new folder (or overwrite=True).")
    with torch.no_grad():
        lens.weight.copy_(tensors["weight"])
        lens.bias.copy_(tensors["bias"])
    for k, param in enumerate((lens.weight, lens.bias)):
        moments = {key.split("/")[-1]: value for key, value in tensors.items() if key.startswith(f"adam/{k}/")}
        if moments:
            optimizer.state[param] = {key: (value.reshape(()) if key == "step" else value).to(param.device)
                                      for key, value in moments.items()}
    state.update({k: info[k] for k in ("done", "skipped", "losses")})

