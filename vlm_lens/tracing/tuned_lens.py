"""The tuned lens: one affine translator per hidden index in front of the model's final norm and output head.

Why: the logit lens reads layer ``l`` as if it were the last, but early and middle layers do not speak the output
head's basis — on the shipped one-stage zoo checkpoint the logit lens is about 1.8 nats (KL) from the model's own
output at the decoder input. The tuned lens (Belrose et al., 2023, "Eliciting Latent Predictions from Transformers
with the Tuned Lens") learns, for each hidden index ``l < L``, an affine map ``h -> h + A_l h + b_l`` (identity at
``A_l = 0, b_l = 0``, where fitting starts) so that ``unembed(final_norm(h + A_l h + b_l))`` is as close as possible to
the model's final distribution. Hidden index ``L`` (the last block's output) reads through the model's own final
norm and head unchanged: there the lens *is* the model's logits.

This module holds the lens and its reading (a :class:`~vlm_lens.tracing.lens.Lens`, so every reader takes it as
``lens=``), and its files: ``lens.safetensors`` (the translators) and ``lens.json`` (the model's fingerprint, the
shapes, the fitting settings and the held-out KL per layer). Fitting streams a dataset like a run, so it lives in
:mod:`vlm_lens.runs.lens_fit` and is attached here as :meth:`TunedLens.fit` when ``vlm_lens`` is imported.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> m = vl.load(tiny_llava(tempfile.mkdtemp(), layers=2))
    >>> lens = vl.TunedLens(m)                            # identity translators: reads like the logit lens
    >>> lens.layers, lens.weight.shape
    ([0, 1], torch.Size([2, 64, 64]))
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import VlmLensError
from ..core.version import __version__
from .fingerprint import weights_fingerprint
from .lens import CHUNK_BYTES, Lens

if TYPE_CHECKING:
    from .loading import LensModel

__all__ = ["LENS_FOLDER", "TunedLens", "register_fit"]

FORMAT_VERSION = 1
#: Where a checkpoint folder keeps its tuned lens (``TunedLens.load(checkpoint_folder, model)`` looks there).
LENS_FOLDER = "tuned_lens"
_FILES = ("lens.safetensors", "lens.json")


class TunedLens(nn.Module, Lens):
    """Affine translators for hidden indices ``layers`` of one model, read through its final norm and head.

    Args:
        model: The model the lens reads (from :func:`vlm_lens.load`); the lens keeps a reference to its adapter.
        layers: Hidden indices that get a translator (default: every one below the last, ``0..L-1``). Hidden index
            ``L`` is always read through the model's own norm and head; other indices cannot be read.
        info: What :meth:`save` writes besides the tensors (fitting settings, held-out KL); set by fitting.
        chunk_bytes: Budget for one chunk of float32 logits when reading many rows.

    Attributes:
        weight: ``[translator, d_model, d_model]`` float32, ``A_l`` of each translated hidden index (zeros: identity).
        bias: ``[translator, d_model]`` float32, ``b_l``.
        layers: The translated hidden indices, in the order of ``weight``'s rows.

    Example:
        >>> logits = lens(t.hidden[3], 3)                     # [pos, vocab]        # doctest: +SKIP
        >>> t.lens(topk=4, lens=lens)                          # every reader: lens=  # doctest: +SKIP
    """

    name = "tuned lens"
    kind = "tuned"
    layer_dependent = True

    def __init__(self, model: "LensModel", layers: Sequence[int] | None = None, *, info: dict | None = None,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__()
        adapter = model.adapter
        n = adapter.n_layers
        chosen = list(range(n)) if layers is None else list(layers)
        bad = [l for l in chosen if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n]
        if bad or not chosen or len(set(chosen)) != len(chosen):
            raise VlmLensError(f"layers={list(chosen)!r}: expected distinct hidden indices in 0..{n - 1} (hidden index "
                               f"{n} reads through the model's own norm and head, without a translator).")
        head = adapter.output_head.weight
        d_model = int(head.shape[1])
        self.adapter = adapter
        self.chunk_bytes = chunk_bytes
        self.layers = sorted(chosen)
        self._row = {l: i for i, l in enumerate(self.layers)}
        self.weight = nn.Parameter(torch.zeros(len(self.layers), d_model, d_model, device=head.device))
        self.bias = nn.Parameter(torch.zeros(len(self.layers), d_model, device=head.device))
        self.info: dict[str, Any] = dict(info or {})
        self.info.setdefault("model", {**weights_fingerprint(adapter.model), "name": model.name})

    # ---------------------------------------------------------------------------------------------------- reading
    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``[..., d_model]`` residual stream at hidden index ``layer`` -> the translated state (float32, before the
        final norm); the identity at the last hidden index."""
        h = hidden.to(device=self.weight.device, dtype=torch.float32)
        if layer == self.adapter.n_layers:
            return h
        row = self._row_of(layer)
        return h + nn.functional.linear(h, self.weight[row], self.bias[row])

    def translate_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., translator, d_model]`` residual streams at the hidden indices :attr:`layers` (in that order) ->
        their translated states (float32), all translators in one product (what fitting uses)."""
        h = hidden.to(device=self.weight.device, dtype=torch.float32)
        return h + torch.einsum("...ti,toi->...to", h, self.weight) + self.bias

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``[..., d_model]`` residual stream at hidden index ``layer`` (what ``Trace.hidden[layer]`` holds, before
        the final norm) -> ``[..., vocab]`` float32 logits. Differentiable in the translators."""
        head = self.adapter.output_head.weight
        translated = self.translate(hidden, layer).to(device=head.device, dtype=head.dtype)
        return self.adapter.unembed(self.adapter.final_norm(translated)).float()

    @torch.no_grad()
    def rows_logits(self, rows: torch.Tensor, layers: torch.Tensor | None) -> torch.Tensor:
        """``[row, d_model]`` residual streams, row ``i`` at hidden index ``layers[i]`` -> ``[row, vocab]`` float32
        logits: each row through its translator, then all rows through the final norm and head in one call (as the
        logit lens decodes them, so that identity translators reproduce it bit for bit)."""
        if layers is None:
            raise VlmLensError("the tuned lens reads each hidden index through its own translator; pass the hidden "
                               "index of every row.")
        h = rows.to(device=self.weight.device, dtype=torch.float32)
        translated = h.clone()
        for layer in torch.unique(layers).tolist():
            if layer != self.adapter.n_layers:
                where = (layers == layer).to(h.device)
                translated[where] = self.translate(h[where], int(layer))
        head = self.adapter.output_head.weight
        normed = self.adapter.final_norm(translated.to(device=head.device, dtype=head.dtype))
        return self.adapter.unembed(normed).float()

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """:meth:`forward` without gradients (the :class:`~vlm_lens.tracing.lens.Lens` interface)."""
        if layer is None:
            raise VlmLensError("the tuned lens reads each hidden index through its own translator; pass the hidden "
                               "index: lens.logits(hidden, layer).")
        return self.forward(hidden, layer)

    def readable_layers(self) -> list[int]:
        return [*self.layers, self.adapter.n_layers]

    def describe(self) -> dict[str, Any]:
        """``kind``, the translated ``layers``, a sha256 of the translators and the model's weights digest: what a
        run records, so that a run read through another lens is not resumed into this one."""
        digest = hashlib.sha256(json.dumps(self.layers).encode())
        for tensor in (self.weight, self.bias):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {"kind": self.kind, "layers": list(self.layers), "sha256": digest.hexdigest(),
                "model": self.info["model"].get("weights_digest")}

    @property
    def held_out(self) -> pd.DataFrame:
        """KL (nats) of the lens's distribution to the model's output, mean over held-out positions, per hidden
        index: ``layer, logit, tuned`` (``tuned`` equals ``logit`` at the last index); empty before fitting."""
        kl = self.info.get("held_out") or {}
        return pd.DataFrame({k: kl.get(k, []) for k in ("layer", "logit", "tuned")})

    def _row_of(self, layer: int) -> int:
        if layer not in self._row:
            n = self.adapter.n_layers
            why = ("it was not fitted on that one" if isinstance(layer, int) and 0 <= layer < n
                   else f"that is outside 0..{n}")
            raise VlmLensError(f"layer={layer!r}: this tuned lens reads hidden indices {self.layers} and {n} (the "
                               f"model's own head); {why}.")
        return self._row[layer]

    # -------------------------------------------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> Path:
        """Write ``lens.safetensors`` (the translators) and ``lens.json`` (model fingerprint, shapes, settings,
        held-out KL) into ``folder``. Returns the folder.

        Example:
            >>> lens.save("lenses/one-stage")                                # doctest: +SKIP
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
                  str(folder / "lens.safetensors"))
        head = self.adapter.output_head.weight
        info = {"format_version": FORMAT_VERSION, "kind": self.kind, "layers": list(self.layers),
                "n_layers": self.adapter.n_layers, "d_model": int(head.shape[1]), "vocab_size": int(head.shape[0]),
                **{k: v for k, v in self.info.items() if k not in ("layers",)},
                "vlm_lens_version": self.info.get("vlm_lens_version", __version__)}
        (folder / "lens.json").write_text(json.dumps(info, indent=1, sort_keys=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: "LensModel", *, strict: bool = True) -> "TunedLens":
        """Read a lens written by :meth:`save` onto ``model``.

        Args:
            folder: The lens folder; or a checkpoint folder (or ``"zoo:NAME"``) holding one in ``tuned_lens/``.
            model: The model to read through the lens; it must have the shapes the lens was fitted on.
            strict: Refuse a model whose weights differ from the ones the lens was fitted on (False: read another
                model of the same shape through it, e.g. a fine-tune through its base model's lens).

        Raises:
            VlmLensError: Not a lens folder, or ``model`` has another shape (or, with ``strict``, other weights).

        Example:
            >>> lens = vl.TunedLens.load("zoo:tiny-biqa-one-stage", m)          # doctest: +SKIP
        """
        from .loading import LensModel, _resolve_source

        if not isinstance(model, LensModel):
            raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...), got "
                               f"{type(model).__name__}.")
        found = _lens_folder(Path(_resolve_source(str(folder))), folder)
        info = json.loads((found / "lens.json").read_text())
        if info.get("format_version") != FORMAT_VERSION or info.get("kind") != cls.kind:
            raise VlmLensError(f"folder={str(folder)!r}: lens format {info.get('format_version')} of kind "
                               f"{info.get('kind')!r} is not a tuned lens of format {FORMAT_VERSION}; fit it again "
                               "with this version of vlm_lens.")
        head = model.adapter.output_head.weight
        expected = {"n_layers": model.adapter.n_layers, "d_model": int(head.shape[1]), "vocab_size": int(head.shape[0])}
        differ = [f"{k} {info.get(k)} (lens) vs {v} (model)" for k, v in expected.items() if info.get(k) != v]
        if differ:
            raise VlmLensError(f"model: the tuned lens in {str(found)!r} was fitted on a model of another shape "
                               f"({'; '.join(differ)}), fitted on {info.get('model', {}).get('name')!r}; load it onto "
                               "that model, or fit a lens for this one (vl.TunedLens.fit(model, dataset)).")
        fitted = info.get("model", {})
        if strict:
            mine = weights_fingerprint(model.model)
            if any(fitted.get(k) != mine[k] for k in mine):
                raise VlmLensError(f"model: the tuned lens in {str(found)!r} was fitted on other weights "
                                   f"({fitted.get('name')!r}, weights digest {str(fitted.get('weights_digest'))[:12]}) "
                                   f"than {model.name!r} (digest {mine['weights_digest'][:12]}); load it onto that "
                                   "model, fit a lens for this one, or pass strict=False to read this model through "
                                   "it anyway (e.g. a fine-tune through its base model's lens).")
        tensors = load_file(str(found / "lens.safetensors"))
        lens = cls(model, info["layers"], info={k: v for k, v in info.items() if k not in _SHAPE_KEYS})
        if tuple(tensors["weight"].shape) != tuple(lens.weight.shape) or \
                tuple(tensors["bias"].shape) != tuple(lens.bias.shape):
            raise VlmLensError(f"folder={str(folder)!r}: lens.safetensors holds weight {tuple(tensors['weight'].shape)}"
                               f" and bias {tuple(tensors['bias'].shape)}, not the {tuple(lens.weight.shape)} and "
                               f"{tuple(lens.bias.shape)} lens.json describes; the folder is damaged: fit it again.")
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        return lens

    # ------------------------------------------------------------------------------------------------------ fitting
    @staticmethod
    def fit(model: "LensModel", dataset: Any, **settings: Any) -> "TunedLens":
        """Fit a tuned lens on a dataset (see :func:`vlm_lens.runs.lens_fit.fit`, which ``import vlm_lens`` attaches
        here with its full signature)."""
        raise VlmLensError("TunedLens.fit streams a dataset like a run and lives in vlm_lens.runs; import vlm_lens "
                           "(or call vlm_lens.extensions.register_all()) before fitting.")

    def __repr__(self) -> str:
        return (f"TunedLens(model={self.info['model'].get('name')!r}, layers={self.layers[0]}..{self.layers[-1]} "
                f"({len(self.layers)} translators), d_model={self.weight.shape[-1]})")


_SHAPE_KEYS = ("format_version", "kind", "layers", "n_layers", "d_model", "vocab_size")


def _lens_folder(path: Path, given: Any) -> Path:
    for candidate in (path, path / LENS_FOLDER):
        if all((candidate / name).is_file() for name in _FILES):
            return candidate
    raise VlmLensError(f"folder={str(given)!r}: no tuned lens there (expected {' and '.join(_FILES)}, in the folder or "
                       f"in its {LENS_FOLDER}/ subfolder). Fit one with vl.TunedLens.fit(model, dataset) and "
                       "lens.save(folder).")


_FIT_OWNER: list[str] = []


def register_fit(function: Callable[..., TunedLens]) -> Callable[..., TunedLens]:
    """Attach the fitting function (``vlm_lens.runs`` registers :func:`vlm_lens.runs.lens_fit.fit`) as
    :meth:`TunedLens.fit`, with its own signature and docstring. Registering it again is a no-op; another function
    is refused."""
    owner = f"{function.__module__}.{function.__qualname__}"
    if _FIT_OWNER and _FIT_OWNER[0] != owner:
        raise ValueError(f"TunedLens.fit is already registered by {_FIT_OWNER[0]}; {owner} cannot take it.")
    if not _FIT_OWNER:
        _FIT_OWNER.append(owner)
        TunedLens.fit = staticmethod(function)  # type: ignore[method-assign]
    return function
