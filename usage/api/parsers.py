import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request

from core.errors import InvalidInput
from usage.validation import MAX_PROPERTIES_DEPTH


class DecimalJSONParser(JSONParser):
    """JSON with numbers read as Decimal, never float: 0.1 stays exactly 0.1."""

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            text = stream.read().decode("utf-8")
            return json.loads(text, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as error:
            raise ParseError(str(error)) from error
        except RecursionError:
            # json's decoder recurses once per level and gives up near a thousand; no valid body comes
            # close (properties stop at MAX_PROPERTIES_DEPTH), so say where the nesting went too deep.
            raise ParseError(
                f"{_deepest_path(text)}: nested deeper than properties may be ({MAX_PROPERTIES_DEPTH} levels)"
            ) from None


def _deepest_path(text: str, shown: int = 4) -> str:
    """The first few keys and indexes on the way into the deepest nesting of a JSON text, e.g. properties.a.

    Scans characters instead of decoding, since decoding is what ran out of stack. Only a rejected body
    is scanned.
    """
    path: list[str | int] = []
    in_string = escaped = False
    current: list[str] = []
    last_string = ""
    for char in text:
        if in_string:
            if escaped:
                escaped = False
                current.append(char)
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string, last_string = False, "".join(current)
            else:
                current.append(char)
        elif char == '"':
            in_string, current = True, []
        elif char == ":" and path and isinstance(path[-1], str):
            path[-1] = last_string
        elif char in "{[":
            path.append(0 if char == "[" else "")
            if len(path) > shown:
                break
        elif char in "}]" and path:
            path.pop()
        elif char == "," and path and isinstance(path[-1], int):
            path[-1] += 1
    names = [f"[{step}]" if isinstance(step, int) else f".{step}" for step in path[:-1]]
    return "".join(names).lstrip(".") or "body"


def only_known_query_parameters(request: Request, known: Iterable[str] = ()) -> None:
    """Refuse a query parameter the endpoint does not take: a typo (``?limt=5``) would otherwise be ignored
    without a word, and the answer would not be what the client asked for."""
    known = set(known)
    for name in request.query_params:
        if name not in known:
            raise InvalidInput(f"Unknown query parameter {name[:40]!r}.", param=name[:40])
