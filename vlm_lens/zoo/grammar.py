"""The small fixed grammar the zoo speaks: descriptions of degradations, quality levels, prompts, vocabulary.

Descriptions are generated from the severities by a fixed grammar, so that a generated description can be
parsed back into (degradation, severity word) pairs and scored against the ground truth exactly:

    description  := "The image is " ADJECTIVES [", with " NOUNS] "."
    ADJECTIVES   := join(adjective phrases) | "clear"            (blur, dark, bright: in this order)
    NOUNS        := join(noun phrases)                           (noise, jpeg, contrast, desaturation)
    join(a)      := a | a " and " b | a ", " b " and " c ...
    clean image  := "The image is clear, with no visible distortions."

Each degradation has three severity words, by thirds of its severity ``s``: ``s <= 1/3`` slight,
``s <= 2/3`` moderate, above heavy. Example: "The image is slightly blurry, with heavy noise and very low
contrast." The quality sentence is "The quality of the image is {level}." with the five Q-Align level words,
by equal bins of the MOS on [1, 5].

Example:
    >>> describe({"blur": 0.2, "noise": 0.9, "contrast": 0.7})
    'The image is slightly blurry, with heavy noise and very low contrast.'
    >>> parse("The image is slightly blurry, with heavy noise and very low contrast.")
    {'blur': 'slight', 'noise': 'heavy', 'contrast': 'heavy'}
    >>> level_of(3.0)
    'fair'
"""

from __future__ import annotations

import re
from typing import Mapping

from ..biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT, WEIGHTS
from ..core.errors import VlmLensError
from .tokenizer import BASIC_WORDS, SPECIAL_TOKENS

__all__ = ["LEVELS_WORST_FIRST", "LEVEL_WEIGHTS", "PROMPTS", "QUALITY_SENTENCE", "SEVERITY_WORDS", "VOCABULARY",
           "answer", "describe", "level_of", "parse", "parse_level", "severity_word"]

#: The quality levels (:data:`~vlm_lens.biqa.vocabulary.LEVELS`), worst first: the order of the MOS bins.
LEVELS_WORST_FIRST = tuple(reversed(LEVELS))
#: Level word -> weight of the Q-Align score.
LEVEL_WEIGHTS = dict(zip(LEVELS, WEIGHTS))
#: Lower edges of poor, fair, good, excellent on the MOS scale (five equal bins of [1, 5]).
LEVEL_EDGES = (1.8, 2.6, 3.4, 4.2)
#: Severity words by thirds of the severity.
SEVERITY_WORDS = ("slight", "moderate", "heavy")

QUALITY_SENTENCE = f"{ANSWER_PREFIX} {{level}}."
CLEAN = "The image is clear, with no visible distortions."

#: Degradation -> (kind, phrase per severity word). Adjectives follow "The image is", nouns follow "with".
PHRASES = {
    "blur": ("adjective", ("slightly blurry", "moderately blurry", "very blurry")),
    "dark": ("adjective", ("slightly dark", "moderately dark", "very dark")),
    "bright": ("adjective", ("slightly overexposed", "moderately overexposed", "very overexposed")),
    "noise": ("noun", ("slight noise", "moderate noise", "heavy noise")),
    "jpeg": ("noun", ("slight compression artifacts", "moderate compression artifacts",
                      "heavy compression artifacts")),
    "contrast": ("noun", ("slightly low contrast", "moderately low contrast", "very low contrast")),
    "desaturation": ("noun", ("slightly faded colours", "moderately faded colours", "very faded colours")),
}

#: The questions the zoo models are trained with (one is drawn per training sample); the first is the default.
PROMPTS = (
    QALIGN_PROMPT,
    "Describe the quality of this image.",
    "What do you think about the quality of this image?",
    "Rate the quality of the picture.",
    "Can you evaluate the quality of this photo?",
)

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


def _vocabulary() -> list[str]:
    texts = ["user assistant :", CLEAN, QUALITY_SENTENCE.format(level=" ".join(LEVELS_WORST_FIRST)), " , and with"]
    texts += list(PROMPTS) + [p for _, phrases in PHRASES.values() for p in phrases]
    seen: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for text in texts:
        seen.update(dict.fromkeys(_words(text)))
    seen.update(dict.fromkeys(BASIC_WORDS))  # general words, so that other questions mostly tokenize
    return list(seen)


#: The zoo tokenizer's vocabulary: special tokens, the grammar's words, the prompts' words, some general words.
VOCABULARY = _vocabulary()


def severity_word(severity: float) -> str:
    """``slight`` (s <= 1/3), ``moderate`` (s <= 2/3) or ``heavy``, for a severity in (0, 1]."""
    if not 0.0 < severity <= 1.0:
        raise VlmLensError(f"severity={severity}: expected a value in (0, 1] (0 means the degradation is absent).")
    return SEVERITY_WORDS[min(2, int(severity * 3 - 1e-9))]


def describe(severities: Mapping[str, float]) -> str:
    """The description of an image with these severities (degradations with severity 0 are absent)."""
    unknown = set(severities) - set(PHRASES)
    if unknown:
        raise VlmLensError(f"severities: unknown degradation(s) {sorted(unknown)}; expected names from "
                           f"{list(PHRASES)}.")
    adjectives, nouns = [], []
    for name, (kind, phrases) in PHRASES.items():
        s = float(severities.get(name, 0.0))
        if s > 0:
            phrase = phrases[SEVERITY_WORDS.index(severity_word(s))]
            (adjectives if kind == "adjective" else nouns).append(phrase)
    if not adjectives and not nouns:
        return CLEAN
    text = "The image is " + _join(adjectives or ["clear"])
    if nouns:
        text += ", with " + _join(nouns)
    return text + "."


def answer(description: str, level: str) -> str:
    """The full answer the zoo models give: the description, then the quality sentence."""
    return f"{description} {QUALITY_SENTENCE.format(level=level)}"


def level_of(mos: float) -> str:
    """The level word of a MOS on [1, 5]: equal bins of width 0.8, ``[1, 1.8)`` bad ... ``[4.2, 5]`` excellent."""
    if not 1.0 <= mos <= 5.0:
        raise VlmLensError(f"mos={mos}: expected a value in [1, 5].")
    return LEVELS_WORST_FIRST[sum(mos >= edge for edge in LEVEL_EDGES)]


def parse(text: str) -> dict[str, str]:
    """The (degradation -> severity word) pairs a description names; phrases may appear in any order."""
    text = " ".join(_words(text))
    found = {}
    for name, (_, phrases) in PHRASES.items():
        for word, phrase in zip(SEVERITY_WORDS, phrases):
            if re.search(r"\b" + re.escape(" ".join(_words(phrase))) + r"\b", text):
                found[name] = word
                break
    return found


def parse_level(text: str) -> str | None:
    """The level word of the quality sentence in ``text`` (the last level word after "is"), or None."""
    words = _words(text)
    hits = [words[i + 1] for i in range(len(words) - 1) if words[i] == "is" and words[i + 1] in LEVELS]
    return hits[-1] if hits else None


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
