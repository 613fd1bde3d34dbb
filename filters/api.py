"""The filter plugin API.

A filter is a plain function `fn(table, params) -> (keep, score)`:
    table   a pyarrow Table of one shard's samples, holding at least the columns the filter needs
    params  an instance of the filter's parameter dataclass (read from the recipe's YAML)
    keep    bool numpy array, one per row: does the sample pass
    score   float numpy array or None: what a `top_fraction` step ranks by (higher is better)

It is registered by name with its parameter dataclass and a `needs(params)` function that lists the
feature columns it reads. A filter that needs pool-wide work first (k-means over all embeddings, say)
also registers `prepare(pool, params) -> context`, run once on the driver; it is then called as
`fn(table, params, context)` (see docs/filters.md for the columns a pool offers). Filters from other
packages register themselves through the `thresher.filters` entry-point group: the entry point is a
module, or a callable that is called once, which calls `register` for each of its filters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

ENTRY_POINT_GROUP = "thresher.filters"

FilterFn = Callable[[pa.Table, Any], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True)
class FilterSpec:
    name: str
    fn: FilterFn
    params: type
    needs: Callable[[Any], list[str]]
    scores: bool  # returns a score a top_fraction step can rank by
    doc: str
    prepare: Callable | None = None  # prepare(pool, params) -> context, once on the driver (pool-wide work)


_REGISTRY: dict[str, FilterSpec] = {}
_loaded_plugins = False


@dataclass
class NoParams:
    pass


def register(name: str, params: type = NoParams, needs: Callable[[Any], list[str]] | list[str] = (),
             scores: bool = False, prepare: Callable | None = None):
    """Decorator: `@register("caption_length", CaptionLength, needs=["caption_words", "caption_chars"])`."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"filter {name}: params must be a dataclass")
    needs_fn = needs if callable(needs) else (lambda _p, cols=list(needs): cols)

    def wrap(fn: FilterFn) -> FilterFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"filter {name!r} is registered twice ({_REGISTRY[name].fn.__module__} and "
                             f"{fn.__module__})")
        _REGISTRY[name] = FilterSpec(name, fn, params, needs_fn, scores, (fn.__doc__ or "").strip().split("\n")[0],
                                     prepare)
        return fn

    return wrap


def _load_plugins() -> None:
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    from importlib.metadata import entry_points

    from . import builtin  # noqa: F401 - registers the built-in filters

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj):
            obj()


def get(name: str) -> FilterSpec:
    _load_plugins()
    return _REGISTRY[name]


def known() -> dict[str, FilterSpec]:
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))
