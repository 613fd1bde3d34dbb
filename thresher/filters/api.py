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
module, or a callable that is called once, which calls `register` for each of its filters. A recipe may
also name a filter as `module:function` (`resolve`): importing the module registers it. docs/plugins.md
walks through a plugin package (docs/plugin-example).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.core.errors import InputError

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


def register(
    name: str,
    params: type = NoParams,
    needs: Callable[[Any], list[str]] | list[str] = (),
    scores: bool = False,
    prepare: Callable | None = None,
):
    """Decorator: `@register("caption_length", CaptionLength, needs=["caption_words", "caption_chars"])`."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"filter {name}: params must be a dataclass")
    needs_fn = needs if callable(needs) else (lambda _p, cols=list(needs): cols)

    def wrap(fn: FilterFn) -> FilterFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(
                f"filter {name!r} is registered twice ({_REGISTRY[name].fn.__module__} and {fn.__module__})"
            )
        _REGISTRY[name] = FilterSpec(
            name, fn, params, needs_fn, scores, (fn.__doc__ or "").strip().split("\n")[0], prepare
        )
        return fn

    return wrap


def _load_plugins() -> None:
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    from importlib.metadata import entry_points

    # the built-in filters come in by Thresher's own entry point (pyproject.toml), as a plugin's do
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as err:  # one broken plugin is named, rather than a traceback from inside it
            dist = ep.dist.name if ep.dist else "its package"
            raise InputError(
                f"filter plugin {ep.name} = {ep.value} (from {dist}, entry-point group "
                f"{ENTRY_POINT_GROUP}) failed to load: {type(err).__name__}: {err}; fix or "
                f"reinstall {dist}, or uninstall it"
            ) from err
    if "none" not in _REGISTRY:
        raise InputError(
            f"the built-in filters are not registered: Thresher's {ENTRY_POINT_GROUP!r} entry "
            f"point is missing from this environment; reinstall Thresher (pip install -e .). A stale "
            f"thresher.egg-info in the working directory hides it: delete that folder"
        )


def get(name: str) -> FilterSpec:
    _load_plugins()
    return _REGISTRY[name]


def resolve(ref: str) -> FilterSpec:
    """The filter a recipe step names: a registered name, or `module:function`, whose module is imported
    (registering its filters) and whose function must be one of them."""
    _load_plugins()
    if ":" not in ref:
        if ref in _REGISTRY:
            return _REGISTRY[ref]
        raise InputError(
            f"unknown filter {ref!r}; known: {', '.join(sorted(_REGISTRY))}. A filter from a "
            f"plugin needs its package installed in this environment (`pip install PACKAGE`) "
            f"with a {ENTRY_POINT_GROUP!r} entry point (`thresher filters` lists what is "
            f"registered), or name it as module:function"
        )
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if err.name and (module_name + ".").startswith(err.name + "."):  # the module (or a parent) is not there
            raise InputError(
                f"filter {ref!r}: no module {module_name!r} to import; install the package "
                f"that provides it (`pip install PACKAGE`) or put its directory on "
                f"PYTHONPATH"
            ) from err
        raise InputError(f"filter {ref!r}: importing {module_name} failed: {err}") from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise InputError(f"filter {ref!r}: module {module_name} has no {attr!r}")
    # by identity: `register` returns the function itself, so the module's name for it is the spec's fn
    spec = next((s for s in _REGISTRY.values() if s.fn is fn), None)
    if spec is None:
        raise InputError(
            f"filter {ref!r}: {module_name}.{attr} is not a registered filter; decorate it "
            f"with @filters.api.register(NAME, PARAMS, needs=[...]) (docs/plugins.md)"
        )
    return spec


def known() -> dict[str, FilterSpec]:
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))
