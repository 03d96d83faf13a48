"""The KV-cache argument of a transformers model's ``forward``, across versions.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (input and output) and warns on
every call that uses the old name; older releases know only ``past_key_values``. Decoding
loops pass the cache through `cache_kwargs` and read it back with `cache_of`, so they run
silently on either.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=64)
def _cache_argument(model_class: Any) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name ``model.forward`` takes (nothing for no cache yet)."""
    if cache is None:
        return {}
    model_class: Any = type(model)
    return {_cache_argument(model_class): cache}


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned (``output.cache`` or ``output.past_key_values``)."""
    fields = output.keys() if hasattr(output, "keys") else ()
    if "cache" in fields:
        return output["cache"]
    return output.past_key_values
