"""The config reference: every config dataclass rendered as markdown (docs/config-reference.md).

    python -m thresher.app.reference > docs/config-reference.md

A config dataclass is one whose fields are declared with `config.opt` (so they carry help text). Every
module of the `pipeline` package is searched for them, so a new config shows up without a list to
update; `USAGE` only adds where a known one is used and fixes the order. Filter parameters come from
the filter registry: the built-in filters only, since plugins differ from one environment to the next.
tests/test_reference.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
import typing

import yaml

COMMAND = "python -m thresher.app.reference > docs/config-reference.md"

# "module.Class": (the thresher command whose flags set its fields, or None; where it is used).
# The order is the pipeline's.
USAGE: dict[str, tuple[str | None, str]] = {
    "thresher.synthetic.synth.SynthConfig": (
        "synth",
        "Used by `thresher synth`. `--config` takes a YAML file or a preset in `configs/synth/`; every field "
        "is also a flag, which wins over the file.",
    ),
    "thresher.stages.acquire.download.DownloadConfig": (
        "download",
        "Used by `thresher download`. `--config` takes a YAML file or a preset in `configs/download/` "
        "(`datacomp`, `demo`); every field is also a flag, which wins over the file. A re-run on "
        "the same pool must keep the settings, apart from `processes`, `threads`, `shard_retries` "
        "and `shard_deadline_s`.",
    ),
    "thresher.stages.features.clip.ScorerConfig": (
        "features",
        "Used by `thresher features`: one scorer per `--model` (paired in order with `--pretrained` and "
        "`--scorer-id`); the other flags apply to every scorer. A field without a flag keeps its "
        "default.",
    ),
    "thresher.stages.dedup.config.DedupConfig": (
        "dedup",
        "Used by `thresher dedup`. `--config` takes a YAML file or a preset in `configs/dedup/`; every field "
        "is also a flag, which wins over the file. Without `--config`, the defaults below apply.",
    ),
    "thresher.stages.filter.filter.Recipe": (
        None,
        "A recipe file: a preset in `configs/recipes/`, or any YAML file given to `--recipe` "
        "(`thresher filter`, `thresher subset`). See [filters.md](filters.md).",
    ),
    "thresher.stages.filter.filter.Step": (
        None,
        "One entry of a recipe's `steps`. An entry may instead be `{include: OTHER}`, which puts "
        "another recipe's steps in its place. `params` are the filter's parameters: see "
        "[Filter parameters](#filter-parameters).",
    ),
    "thresher.stages.subset.subset.SubsetConfig": ("subset", "Used by `thresher subset`."),
    "thresher.experiments.train.TrainConfig": (
        "train",
        "Used by `thresher train` without `--scale` (for example, a data-filtering network).",
    ),
    "thresher.experiments.train.Scale": (
        None,
        "A scale: the fixed training recipe of `thresher train --scale` and `thresher grid --scale`. A "
        "YAML file (presets in `configs/scales/`) holds one scale, or a set under `scales:` with shared "
        "`defaults:`; `SET/NAME` names one scale of a set. See [scaling-laws.md](scaling-laws.md).",
    ),
}
FILTERS_AFTER = "thresher.stages.filter.filter.Step"  # the filter parameters section follows this config


def config_classes() -> list[type]:
    """Every dataclass in thresher's layers with at least one field declared by `opt`: known ones
    in USAGE's order, then any others by module and name."""
    import thresher

    found: dict[str, type] = {}
    for info in sorted(pkgutil.walk_packages(thresher.__path__, "thresher."), key=lambda m: m.name):
        if info.ispkg or info.name.startswith("thresher.filters."):  # filter steps: their own section
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and any("help" in f.metadata for f in dataclasses.fields(obj))
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    known = [found.pop(name) for name in USAGE if name in found]
    return known + [found[name] for name in sorted(found)]


def _flags(command: str) -> dict[str, str]:
    """dest -> the option strings of one `thresher` command, from the command registry."""
    from thresher.app.commands import COMMANDS, arguments

    return {
        a.dest: ", ".join(f"`{o}`" for o in a.option_strings)
        for a in arguments(COMMANDS[command].args)
        if a.flags and a.dest not in ("ray_address", "config")
    }


def _type(tp) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _value(v) -> str:
    """A default as it is written in YAML."""
    text = yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return f"`{_value(f.default_factory())}`"
    if f.default is dataclasses.MISSING:
        return "required"
    return f"`{_value(f.default)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(cls: type, flags: dict[str, str] | None, first: str = "field") -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if not fields:
        return ["No parameters."]
    head = [first, "type", "default"] + (["flag"] if flags is not None else []) + ["what it does"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for f in fields:
        row = [f"`{f.name}`", f"`{_type(hints[f.name])}`", _default(f)]
        if flags is not None:
            row.append(flags.get(f.name, ""))
        row.append(f.metadata.get("help", ""))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def _doc(obj) -> str:
    return " ".join((inspect.getdoc(obj) or "").split())


def _filters() -> list[str]:
    from thresher.filters import api

    out = [
        "## Filter parameters",
        "",
        "The `params` of a recipe step, for each built-in filter (`thresher/filters/builtin.py`). *Scores: yes* "
        "means the filter returns a score, so its step may take `top_fraction`. Filters from plugins are "
        "not listed here: `thresher filters` lists every filter registered in your environment.",
        "",
    ]
    for name, spec in api.known().items():
        if spec.fn.__module__ != "thresher.filters.builtin":
            continue
        out += [f"### `{name}`", "", f"{_doc(spec.fn)} Scores: {'yes' if spec.scores else 'no'}.", ""]
        out += _table(spec.params, None, first="parameter") + [""]
    return out


def render() -> str:
    classes = config_classes()
    out = [
        "# Config reference",
        "",
        "Every setting of every config, with its type and default: what you can put in a config file or "
        "a recipe, and which flag sets it on the command line.",
        "",
        "This page is generated from the config dataclasses; do not edit it by hand. After changing a "
        "config, regenerate it:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "`tests/test_reference.py` fails while it is out of date.",
        "",
        "Config files are YAML. An unknown field, or a value of the wrong type, stops the command with an "
        "error that names the file and the field. A flag given on the command line wins over the file.",
        "",
        "## Contents",
        "",
    ]
    for cls in classes:
        out.append(f"- [{cls.__name__}](#{cls.__name__.lower()})")
        if f"{cls.__module__}.{cls.__qualname__}" == FILTERS_AFTER:
            out.append("- [Filter parameters](#filter-parameters)")
    out.append("")
    for cls in classes:
        key = f"{cls.__module__}.{cls.__qualname__}"
        command, usage = USAGE.get(key, (None, _doc(cls)))
        out += (
            [f"## {cls.__name__}", "", usage, "", f"Defined in `{key}`.", ""]
            if usage
            else [f"## {cls.__name__}", "", f"Defined in `{key}`.", ""]
        )
        out += _table(cls, _flags(command) if command else None) + [""]
        if key == FILTERS_AFTER:
            out += _filters()
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
