"""A cheap count of a prompt's tokens for ``LLMCall(input_tokens=...)``, with the host's tokenizer or a heuristic."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

__all__ = ["approx_tokens"]

#: Tokens added per chat message for its role and framing (OpenAI documents 3-4).
PER_MESSAGE = 4


def _heuristic(text: str) -> int:
    """About 4 ASCII characters per token; every other character counted as a token of its own.

    Errs high for non-Latin scripts (CJK is close to one token per character), which
    suits a budget hold: an estimate that is too low lets calls through that do not fit.
    """
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, Mapping):
        for key in ("text", "content", "input", "parts"):
            if key in content:
                yield from _texts(content[key])
    elif isinstance(content, Iterable):
        for part in content:
            yield from _texts(part)


def approx_tokens(
    prompt: str | Iterable[Any],
    tokenizer: Callable[[str], Sized | int] | None = None,
    per_message: int = PER_MESSAGE,
) -> int:
    """Count the input tokens of ``prompt``: a string, or chat messages (dicts with ``content``).

    ``tokenizer`` is the host's own, if it has one, e.g. ``tiktoken.encoding_for_model("gpt-4o").encode``
    (anything returning a sequence of tokens or a count); without one a heuristic is used
    (about 4 characters per token, erring high). Message content may be a string or a
    list of parts with ``text``; images and files are not counted. Pass the result as
    ``LLMCall(input_tokens=...)`` so the pre-flight hold is not built from the default.
    """
    if tokenizer is not None and not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable from text to tokens, got {tokenizer!r}")
    if isinstance(per_message, bool) or not isinstance(per_message, int) or per_message < 0:
        raise ValueError(f"per_message must be a whole number of tokens >= 0, got {per_message!r}")

    def count(text: str) -> int:
        if tokenizer is None:
            return _heuristic(text)
        tokens = tokenizer(text)
        return tokens if isinstance(tokens, int) else len(tokens)

    if isinstance(prompt, str):
        return count(prompt)
    if isinstance(prompt, Mapping) or not isinstance(prompt, Iterable):
        raise TypeError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    total = 0
    for message in prompt:
        total += per_message + sum(count(text) for text in _texts(message))
    return total
