"""Token counts read from a model's response, OpenAI- or Anthropic-shaped, by duck typing.

Works on the SDKs' response objects and on their JSON as dicts, with no dependency on either SDK:

- OpenAI Chat Completions: ``usage.prompt_tokens``, ``usage.completion_tokens``, ``usage.total_tokens``,
  cached input in ``usage.prompt_tokens_details.cached_tokens`` (already counted in ``prompt_tokens``);
- OpenAI Responses: ``usage.input_tokens``, ``usage.output_tokens``, ``usage.total_tokens``, cached input
  in ``usage.input_tokens_details.cached_tokens`` (already counted in ``input_tokens``);
- Anthropic Messages: ``usage.input_tokens`` and ``usage.output_tokens``, where input read from or
  written to the prompt cache is counted apart (``cache_read_input_tokens``,
  ``cache_creation_input_tokens``) and added here, so ``input_tokens`` is all the input the model read.

Pass the response itself or its ``usage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_ANTHROPIC_CACHE_FIELDS = ("cache_read_input_tokens", "cache_creation_input_tokens")
_USAGE_FIELDS = ("prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens")


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(source: Any, name: str) -> int | None:
    value = _field(source, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"usage.{name} is {value!r}, not a whole number of tokens.")
    return int(value)


def _usage_of(response: Any) -> Any:
    if any(_field(response, name) is not None for name in _USAGE_FIELDS):
        return response
    usage = _field(response, "usage")
    if usage is None:
        raise ValueError(f"{type(response).__name__} has no token usage (no .usage with token counts).")
    return usage


def token_usage(response: Any) -> TokenUsage:
    usage = _usage_of(response)
    prompt = _count(usage, "prompt_tokens")
    input_tokens = prompt if prompt is not None else _count(usage, "input_tokens")
    completion = _count(usage, "completion_tokens")
    output_tokens = completion if completion is not None else _count(usage, "output_tokens")
    if input_tokens is None and output_tokens is None:
        raise ValueError(f"{type(usage).__name__} holds no input or output token counts.")
    input_tokens = input_tokens or 0
    output_tokens = output_tokens or 0
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_written = _count(usage, "cache_creation_input_tokens")
    if cache_read is not None or cache_written is not None:
        # Anthropic counts cached input apart from input_tokens.
        return TokenUsage(
            input_tokens=input_tokens + (cache_read or 0) + (cache_written or 0),
            output_tokens=output_tokens,
            cached_input_tokens=cache_read or 0,
        )
    details = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
    cached = _count(details, "cached_tokens") if details is not None else None
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached or 0)


def total_tokens(response: Any) -> int:
    """All tokens of the call: the response's own ``total_tokens`` when it says, else input plus output."""
    usage = _usage_of(response)
    stated = _count(usage, "total_tokens")
    return stated if stated is not None else token_usage(usage).total_tokens


def input_tokens(response: Any) -> int:
    return token_usage(response).input_tokens


def output_tokens(response: Any) -> int:
    return token_usage(response).output_tokens
