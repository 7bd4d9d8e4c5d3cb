"""The prompt formats of the mPLUG-Owl2 family, by name.

The family's own conversation format is ``"q-instruct"`` (Q-Instruct / mPLUG-Owl2 chat):
``USER: <|image|>{question} ASSISTANT:`` (no system prompt; an assistant turn ends with ``</s>``). Formats of a
task built on the family register here with :func:`register_prompt_format`: ``vlm_lens.biqa`` registers Q-Align's
scoring format ``"q-align"`` (``import vlm_lens`` does it), so that this layer names no task of its own.

Example:
    >>> from vlm_lens.models.mplug_owl2.prompts import PromptFormat, prompt_format
    >>> prompt_format("q-instruct").template
    'USER: {images}{question} ASSISTANT:'
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import VlmLensError

__all__ = ["PROMPT_FORMATS", "PromptFormat", "prompt_format", "register_prompt_format"]


@dataclass(frozen=True)
class PromptFormat:
    """A conversation format.

    Attributes:
        name: Its name in :data:`PROMPT_FORMATS`.
        template: The rendering with ``{images}`` (the placeholders) and ``{question}``.
        inline_template: The rendering when the question already holds the placeholders.
        default_question: Used when the question is empty (None: an empty question stays empty).
    """

    name: str
    template: str
    inline_template: str
    default_question: str | None = None


#: The known formats by name.
PROMPT_FORMATS: dict[str, PromptFormat] = {
    "q-instruct": PromptFormat("q-instruct", "USER: {images}{question} ASSISTANT:", "USER: {question} ASSISTANT:"),
}


def register_prompt_format(fmt: PromptFormat) -> PromptFormat:
    """Add ``fmt`` to :data:`PROMPT_FORMATS` (registering an equal format again is a no-op; another format of the
    same name is refused)."""
    if PROMPT_FORMATS.get(fmt.name, fmt) != fmt:
        raise VlmLensError(f"prompt format {fmt.name!r} is already registered with another template.")
    PROMPT_FORMATS[fmt.name] = fmt
    return fmt


def prompt_format(name: str) -> PromptFormat:
    """The format called ``name``, or an error listing the known ones."""
    try:
        return PROMPT_FORMATS[name]
    except (KeyError, TypeError):
        raise VlmLensError(f"prompt format {name!r} is unknown; the mPLUG-Owl2 family has "
                           f"{sorted(PROMPT_FORMATS)} (import vlm_lens for 'q-align').") from None
