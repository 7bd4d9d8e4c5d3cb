"""Is the predicted level grounded in the features the model itself described?

A one-stage BIQA model writes a description ("noisy and slightly dark ...") and then a level. If the level
follows from the description, the features it names should predict the level, and the two should rarely
contradict each other ("clear and sharp ... poor"). The method, in three steps:

1. **Parse** the described text — the response up to the level word (:mod:`vlm_lens.biqa.answer`): the description
   and any words of the level sentence before the level, e.g. "very blurry but" in "very blurry but good ."; the
   whole response when no level word was generated — into feature intensities with a configurable
   :class:`Vocabulary`: each feature has cue words or phrases and a polarity (+1 speaks for quality, -1
   against). A cue preceded (within 3 words) by a negation ("no noise") does not count; an intensifier within 2
   words before it scales it ("very" x2, "slightly" x0.5). A feature's value is the largest intensity among its
   cues (0 when absent); ``polarity`` is ``sum(polarity_f * value_f)``.
2. **Explain** the predicted level (ordinal: best level highest) from the feature values with a proportional-odds
   (cumulative logit) model, ``P(y <= j | x) = sigmoid(theta_j - x . beta)``, L2-penalised (``l2``), fitted by
   L-BFGS (scipy). Reported: ``k``-fold cross-validated accuracy of the exact level and mean absolute error in
   levels, next to the majority-class baseline in the same folds, the Spearman correlation of the predicted
   expected level with the level, and the coefficients ``beta`` fitted on all samples (positive: the feature
   speaks for a higher level).
3. **Contradictions**: a description with positive polarity and a level in the worse half of the scale
   (poor, bad by default), or negative polarity and a level in the better half (excellent, good). The rate is
   over samples that have a level and name at least one feature.

Example:
    >>> parse_features("very noisy but sharp")["noise"], parse_features("no noise")["noise"]
    (2.0, 0.0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..core.checks import as_int, as_number, as_text, as_words, is_integer
from ..core.errors import VlmLensError
from ..runs.reducers import Reducer, TraceRequest
from ..runs.stats import sigmoid, srcc
from .answer import AnswerLayout, locate, tokenizer_of
from .vocabulary import ANSWER_PREFIX, DESCRIBE_PROMPT, LEVELS

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.record import Trace

__all__ = ["Feature", "Grounding", "Vocabulary", "contradiction", "described_text", "explain_levels",
           "parse_features"]



@dataclass(frozen=True)
class Feature:
    """Cue words / phrases of one described feature and whether it speaks for (+1) or against (-1) quality."""

    cues: tuple[str, ...]
    polarity: int


@dataclass(frozen=True)
class Vocabulary:
    """What the parser looks for. All matching is on lower-cased words.

    Attributes:
        features: Feature name -> :class:`Feature`.
        intensifiers: Word or phrase -> factor, looked for within 2 words before a cue.
        negations: Words or phrases that cancel a cue when they occur within 3 words before it.
    """

    features: dict[str, Feature] = field(default_factory=lambda: {
        "noise": Feature(("noise", "noisy", "grainy", "grain"), -1),
        "blur": Feature(("blur", "blurry", "blurred", "out of focus", "unfocused"), -1),
        "dark": Feature(("dark", "underexposed", "dim"), -1),
        "overexposed": Feature(("overexposed", "washed out", "too bright"), -1),
        "low_contrast": Feature(("low contrast", "faded", "flat"), -1),
        "compression": Feature(("compression", "blocky", "jpeg", "artifacts", "artefacts", "pixelated"), -1),
        "sharp": Feature(("sharp", "clear", "crisp", "detailed", "in focus"), +1),
        "vivid": Feature(("vivid", "saturated", "colourful", "colorful", "high contrast"), +1),
    })
    intensifiers: dict[str, float] = field(default_factory=lambda: {
        "very": 2.0, "heavy": 2.0, "heavily": 2.0, "severe": 2.0, "severely": 2.0, "strong": 2.0, "strongly": 2.0,
        "extremely": 2.0, "slightly": 0.5, "slight": 0.5, "mild": 0.5, "mildly": 0.5, "a bit": 0.5,
        "somewhat": 0.5})
    negations: tuple[str, ...] = ("no", "not", "without", "free of", "lacks", "lacking")

    def __post_init__(self) -> None:
        for name, feature in self.features.items():
            if feature.polarity not in (-1, 1) or not feature.cues:
                raise VlmLensError(f"feature {name!r}: expected cues and a polarity of +1 or -1, got {feature}.")


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _occurrences(words: list[str], phrase: str) -> list[int]:
    parts = _words(phrase)
    n = len(parts)
    return [i for i in range(len(words) - n + 1) if words[i:i + n] == parts]


def _near(words: list[str], start: int, window: int, phrases: Sequence[str]) -> list[str]:
    before = words[max(0, start - window):start]
    return [p for p in phrases if _occurrences(before, p)]


def parse_features(text: str, vocabulary: Vocabulary | None = None) -> dict[str, float]:
    """Feature intensities named in ``text`` (0 when absent or negated), plus ``polarity``.

    Example:
        >>> parse_features("slightly blurry, no noise")["blur"]
        0.5
    """
    vocabulary = vocabulary or Vocabulary()
    words = _words(text)
    out: dict[str, float] = {}
    for name, feature in vocabulary.features.items():
        value = 0.0
        for cue in feature.cues:
            for i in _occurrences(words, cue):
                if _near(words, i, 3, vocabulary.negations):
                    continue
                factors = [vocabulary.intensifiers[w] for w in _near(words, i, 2, list(vocabulary.intensifiers))]
                value = max(value, float(np.prod(factors)) if factors else 1.0)
        out[name] = value
    out["polarity"] = float(sum(vocabulary.features[n].polarity * v for n, v in out.items()))
    return out


def described_text(trace: "Trace", layout: AnswerLayout, tokenizer: Any = None) -> str:
    """The response up to the level word (all of it when there is none), decoded."""
    tokenizer = tokenizer_of(trace, tokenizer)
    stop = layout.level_pos if layout.level_pos is not None else len(trace.tokens)
    ids = trace.tokens["id"].iloc[trace.prompt_length:stop].tolist()
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


# ------------------------------------------------------------------------------------------ ordinal regression
def _class_probs(params: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    beta, raw = params[:x.shape[1]], params[x.shape[1]:]
    theta = np.cumsum(np.concatenate([raw[:1], np.exp(raw[1:])]))  # increasing thresholds
    cdf = sigmoid(theta[None, :] - (x @ beta)[:, None])
    cdf = np.concatenate([np.zeros((len(x), 1)), cdf, np.ones((len(x), 1))], 1)
    return np.clip(np.diff(cdf, axis=1), 1e-12, 1.0)


def _fit_ordinal(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float) -> np.ndarray:
    from scipy.optimize import minimize

    def loss(params: np.ndarray) -> float:
        p = _class_probs(params, x, n_classes)[np.arange(len(y)), y]
        return float(-np.log(p).sum() + 0.5 * l2 * (params[:x.shape[1]] ** 2).sum())

    start = np.concatenate([np.zeros(x.shape[1]), [-(n_classes - 2) / 2.0], np.zeros(n_classes - 2)])
    return minimize(loss, start, method="L-BFGS-B").x


def explain_levels(features: pd.DataFrame, levels: Sequence[str], *, folds: int = 5, l2: float = 1.0,
                   seed: int = 0) -> dict[str, pd.DataFrame]:
    """How well described features predict the level (step 2 of the module docstring).

    Args:
        features: One row per sample: a ``level`` column (a word of ``levels`` or None) and one numeric column
            per feature (every other column except ``index, id, description, polarity, contradiction``).
        levels: Level words, best first.

    Returns:
        ``{"summary": accuracy_cv, baseline_accuracy, mae_cv, srcc_cv, n, folds;
        "coefficients": feature, beta}``; NaN where there are too few samples (fewer than ``folds`` or 2 levels).
    """
    reserved = {"index", "id", "description", "level", "polarity", "contradiction"}
    names = [c for c in features.columns if c not in reserved]
    used = features[features["level"].isin(levels)] if len(features) else features
    n_classes = len(levels)
    summary = {"accuracy_cv": np.nan, "baseline_accuracy": np.nan, "mae_cv": np.nan, "srcc_cv": np.nan,
               "n": len(used), "folds": folds}
    coefficients = pd.DataFrame({"feature": names, "beta": np.nan})
    if len(used) < max(folds, 2) or used["level"].nunique() < 2 or not names:
        return {"summary": pd.DataFrame([summary]), "coefficients": coefficients}
    x = used[names].to_numpy(float)
    y = np.array([n_classes - 1 - list(levels).index(w) for w in used["level"]])  # 0 = worst
    order = np.random.default_rng(seed).permutation(len(y))
    predicted, expected, baseline = np.empty(len(y), int), np.empty(len(y)), np.empty(len(y), int)
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        params = _fit_ordinal(x[train], y[train], n_classes, l2)
        probs = _class_probs(params, x[fold], n_classes)
        predicted[fold], expected[fold] = probs.argmax(1), probs @ np.arange(n_classes)
        baseline[fold] = np.bincount(y[train], minlength=n_classes).argmax()
    summary.update(accuracy_cv=float((predicted == y).mean()), baseline_accuracy=float((baseline == y).mean()),
                   mae_cv=float(np.abs(predicted - y).mean()), srcc_cv=srcc(expected, y))
    coefficients["beta"] = _fit_ordinal(x, y, n_classes, l2)[:len(names)]
    return {"summary": pd.DataFrame([summary]), "coefficients": coefficients}


def contradiction(polarity: float, level: str | None, levels: Sequence[str]) -> bool | None:
    """True when the description's polarity and the level point in opposite directions; None without both."""
    if level not in levels or polarity == 0:
        return None
    rank, middle = list(levels).index(level), (len(levels) - 1) / 2.0
    better, worse = rank < middle, rank > middle
    return bool((polarity > 0 and worse) or (polarity < 0 and better))


class Grounding(Reducer):
    """Dataset-level grounding of the generated level in the generated description.

    Args:
        prompt: A question that asks for a description and a level (default :data:`DESCRIBE_PROMPT`).
        generate: Tokens to generate.
        levels, answer_prefix: Level words and the sentence introducing the level (:mod:`vlm_lens.biqa.answer`).
        vocabulary: What the parser looks for.
        folds, l2, seed: Cross-validation folds, L2 penalty and seed of the ordinal regression.

    Tables: ``samples`` (``index, id, description, level``, one column per feature, ``polarity,
    contradiction``), ``summary`` (the regression's summary plus ``contradiction_rate, n_contradictions,
    n_with_features, n_no_level``), ``coefficients`` (``feature, beta``).

    Example:
        >>> vl.run(m, ds, [Grounding(generate=48)], out="runs/g")["grounding.summary"]   # doctest: +SKIP
    """

    name = "grounding"
    tables = ("samples",)

    def __init__(self, *, prompt: str = DESCRIBE_PROMPT, generate: int = 48, levels: Sequence[str] = LEVELS,
                 answer_prefix: str | None = ANSWER_PREFIX, vocabulary: Vocabulary | None = None, folds: int = 5,
                 l2: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not is_integer(generate) or generate < 1:
            raise VlmLensError(f"generate={generate!r}: grounding reads a generated description; pass >= 1.")
        self.prompt, self.generate = as_text(prompt, "prompt", optional=False), int(generate)
        self.levels, self.answer_prefix = as_words(levels, "levels"), as_text(answer_prefix, "answer_prefix")
        self.vocabulary = vocabulary or Vocabulary()
        self.folds, self.l2 = as_int(folds, "folds", minimum=2), as_number(l2, "l2", minimum=0)
        self.seed = as_int(seed, "seed")

    def config(self) -> dict[str, Any]:
        v = self.vocabulary
        return {"prompt": self.prompt, "generate": self.generate, "levels": self.levels,
                "answer_prefix": self.answer_prefix, "folds": self.folds, "l2": self.l2, "seed": self.seed,
                "vocabulary": {"features": {k: {"cues": list(f.cues), "polarity": f.polarity}
                                            for k, f in v.features.items()},
                               "intensifiers": dict(v.intensifiers), "negations": list(v.negations)}}

    def arguments(self) -> dict[str, Any]:
        return {**self.config(), "vocabulary": self.vocabulary}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, None, self.generate)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        trace = traces[0]
        tokenizer = trace.model.adapter.tokenizer
        layout = locate(trace, self.levels, self.answer_prefix, tokenizer=tokenizer)
        text = described_text(trace, layout, tokenizer)
        values = parse_features(text, self.vocabulary)
        self.emit("samples", {"index": sample.index, "id": sample.id, "description": text, "level": layout.level,
                              **values, "contradiction": contradiction(values["polarity"], layout.level, self.levels)})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        samples = self.frames(rows)["samples"]
        explained = explain_levels(samples, self.levels, folds=self.folds, l2=self.l2, seed=self.seed)
        judged = samples["contradiction"].dropna() if len(samples) else pd.Series(dtype=bool)
        summary = explained["summary"].assign(
            contradiction_rate=float(judged.astype(bool).mean()) if len(judged) else np.nan,
            n_contradictions=int(judged.astype(bool).sum()), n_with_features=len(judged),
            n_no_level=int(samples["level"].isna().sum()) if len(samples) else 0)
        return {"samples": samples, "summary": summary, "coefficients": explained["coefficients"]}
