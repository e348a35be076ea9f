"""The request as a handler sees it."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .params import expand_paths
from .state import State


@dataclass(frozen=True)
class Call:
    """One API request as a handler sees it: decoded params and the ids captured from the path."""

    state: State
    params: dict[str, Any]
    args: tuple[str, ...]

    @property
    def expand(self) -> list[str]:
        return expand_paths(self.params)

    def render(self, obj: dict) -> dict:
        return self.state.render(obj, self.expand)

    def render_list(self, objects: list[dict], url: str) -> dict:
        # In a list the objects sit under "data", so expand=["data.customer"] expands each one's customer.
        expand = [path.removeprefix("data.") for path in self.expand if path.startswith("data.")]
        data = [self.state.render(obj, expand) for obj in objects]
        return self.state.list_page(data, self.params, url)


Handler = Callable[[Call], dict]


def retriever(object_type: str, label: str | None = None) -> Handler:
    """The handler for ``GET /v1/<objects>/{id}``: the stored object, rendered with ``expand``."""

    def retrieve(call: Call) -> dict:
        return call.render(call.state.get(object_type, call.args[0], label=label))

    return retrieve
