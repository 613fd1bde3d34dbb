"""The code's structure, checked (issues 16 and 26): the folders are layers and each imports only the
layers below it; the import path follows the data path; no import cycles; Ray only in the execution
layer; nothing but the entry point imports cli."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# thresher/'s layers, bottom first (docs/architecture.md): a module imports modules of earlier layers and
# of its own, never of a later one. The plugin API (thresher.filters.api) sits with core, where a plugin
# author's package can import it without the stages; the built-in steps are stage code.
LAYERS = ["core", "exec", "algo", "stages", "synthetic", "audit", "experiments", "app"]
PLACED = {"thresher.filters": "core", "thresher.filters.api": "core", "thresher.filters.builtin": "stages"}
# the main line of docs/architecture.md, in data order: a stage may import earlier stages, never later
DATA_PATH = [
    "synthetic.world",
    "synthetic.plan",
    "synthetic.drawing",
    "synthetic.heldout",
    "synthetic.score",
    "synthetic.synth",
    "synthetic.serve",
    "stages.acquire.ingest",
    "stages.acquire.download",
    "stages.features.base",
    "stages.features.clip",
    "stages.features.features",
    "stages.acquire.importing",
    "stages.acquire.adopt",
    "stages.dedup.config",
    "stages.dedup.verdicts",
    "stages.dedup.contamination",
    "stages.dedup.exact",
    "stages.dedup.perceptual",
    "stages.dedup.semantic",
    "stages.dedup.partitioned",
    "stages.dedup.dedup",
    "stages.filter.filter",
    "stages.subset.selection",
    "stages.subset.reshard",
    "stages.subset.uids",
    "stages.subset.subset",
    "experiments.train",
    "experiments.evaluate",
    "experiments.grid",
    "experiments.results",
    "experiments.scaling",
    "experiments.difference",
    "experiments.joint",
    "experiments.replicates",
    "experiments.tables",
    "experiments.compare",
    "experiments.compare_report",
]


def layer_of(module: str) -> str:
    return PLACED.get(module) or module.split(".")[1]


def _modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "thresher").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at the top or inside a function alike."""
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    target = next((c for c in (f"{base}.{a.name}", base) if c in mods), None)
                    if target and target != m:
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods and a.name != m}
    return graph


def test_no_import_cycles():
    graph = _imports(_modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_every_layer_imports_only_the_layers_below_it():
    graph = _imports(_modules())
    rank = {name: i for i, name in enumerate(LAYERS)}
    assert {layer_of(m) for m in graph} <= set(LAYERS), {layer_of(m) for m in graph} - set(LAYERS)
    upward = sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if layer_of(b) != layer_of(a) and rank[layer_of(b)] > rank[layer_of(a)]
    )
    assert not upward, upward


def test_no_stage_imports_a_later_stage():
    graph = _imports(_modules())
    order = {f"thresher.{s}": i for i, s in enumerate(DATA_PATH)}
    backwards = sorted((a, b) for a in order for b in graph[a] if b in order and order[b] > order[a])
    assert not backwards, backwards


def test_only_the_entry_point_imports_cli():
    graph = _imports(_modules())
    assert sorted(m for m, deps in graph.items() if "thresher.app.cli" in deps) == []


def test_ray_is_imported_only_by_the_execution_layer():
    """One execution layer: Ray tasks (execute.py) and the model pipelines on tasks and actors (embed.py)."""
    users = sorted(
        str(p.relative_to(ROOT))
        for p in _modules().values()
        if re.search(r"^\s*(import ray|from ray)\b", p.read_text(), re.M)
    )
    assert users == ["thresher/exec/embed.py", "thresher/exec/execute.py"]


MAX_LINES = 650  # "no module over about 600 lines" (issue 26): a module past it is two modules


def test_no_module_is_over_about_600_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
