"""The command registry's machinery: how a command and its arguments are declared, read and bound.

A command is a `Command`: its name, help and example, `args` (a typed dataclass of its arguments),
`run(args)` (what it does) and `plan(args, sizes, throughputs, cluster)` (its `--plan` estimate), or,
for `audit`, `actions` (nested commands of the same shape). `Call` is a command bound to its arguments.

An argument is a dataclass field declared with `arg()` (`positional=True`; a `bool` is a flag; a `list`
is a repeatable option; a field without a default is required), `include()` (another dataclass's
fields as options here) or `config_group()` (every field of a config dataclass as an option that
overrides `--config`, as a dict of the fields given). `arguments(cls)` reads them as `Arg`s (what the
CLI's parser and a job step's command line are made from), `make` builds an `args` instance from parsed
values, `bind` from a job step's words. `Common` is every command's argument (`--ray-address`), and
`_config_path` and `_print_json` are what the commands' glue shares (with `parse_vars`, in
thresher/core/config.py, where the filter's cost model reads it too).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from thresher.core.config import CONFIG_DIR, preset_or_path
from thresher.core.cost import Cluster, Estimate, Sizes
from thresher.core.errors import InputError

ACTION = "action"  # the key (and argparse dest) naming a nested command: `audit` takes `action: verify`

# how an argument is spelled on the command line
POSITIONAL, VALUE, REPEAT, FLAG, TOGGLE, CSV, MAPPING = (
    "positional",
    "value",
    "repeat",
    "flag",
    "toggle",
    "csv",
    "mapping",
)

args_dataclass = dataclass(frozen=True, kw_only=True)  # keywords only: a default may precede a required field


@dataclass(frozen=True)
class Spec:
    """What a field's type does not say about its argument."""

    help: str | None = None
    positional: bool = False
    flags: tuple[str, ...] = ()
    choices: tuple | None = None
    metavar: str | None = None


def arg(
    default: Any = MISSING,
    help: str | None = None,
    *,
    positional: bool = False,  # noqa: A002
    flags: tuple[str, ...] = (),
    choices: tuple | None = None,
    metavar: str | None = None,
    factory: Any = MISSING,
):
    """A command argument. Without a default (or factory) it is required."""
    meta = {"arg": Spec(help, positional, flags, choices, metavar)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def include(cls: type, group: str | None = None):
    """The fields of `cls` as arguments at this place (in the help section `group`, if given); the value
    is a `cls`."""
    return field(default_factory=cls, metadata={"include": cls, "group": group})


def config_group(path: str):
    """One option per field of the config dataclass `path` ("thresher.layer.module.Class", imported
    when first needed, so the CLI starts without importing every stage); the value is a dict of the fields given, which override the `--config` file."""
    return field(default_factory=dict, metadata={"config": path})


def _config_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def comma_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def mapping(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = float(value)
    return out


@dataclass(frozen=True)
class Arg:
    """One argument of a command as the command line and a job step spell it."""

    dest: str
    kind: str
    help: str | None = None
    flags: tuple[str, ...] = ()  # () for a positional
    type: Callable | None = None  # text -> value (argparse's `type`); None: the text itself
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    metavar: str | None = None
    group: str | None = None  # the help section, when not the command's own options
    many: bool = False  # a positional that takes one or more values (a list field)

    @property
    def option_strings(self) -> tuple[str, ...]:
        return self.flags + (("--no-" + self.flags[0][2:],) if self.kind == TOGGLE else ())

    def tokens(self, value, path: Callable[[Any], str]) -> list[str]:
        """The command-line words of a job step's value (`path` spells one value, making paths absolute):
        a list repeats a repeatable option or joins a comma-separated one; true/false set flags."""
        listed = value if isinstance(value, list) else [value]
        if self.kind == POSITIONAL:
            return [path(v) for v in listed]
        flag = self.flags[0]
        if self.kind == TOGGLE:
            return [flag if value else "--no-" + flag[2:]]
        if self.kind == FLAG:
            return [flag] if value else []
        if self.kind == REPEAT:
            return [w for v in listed for w in (flag, path(v))]
        if isinstance(value, list):
            return [flag, ",".join(path(v) for v in value)]
        if isinstance(value, dict) and self.kind == MAPPING:
            return [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        return [] if value is None else [flag, path(value)]

    def parse(self, words: list[str], where: str):
        """The value these (non-empty) words give, as argparse would parse them."""
        if self.kind == FLAG:
            return True
        if self.kind == TOGGLE:
            return words[-1] == self.flags[0]
        values = words if self.kind == POSITIONAL else words[1::2]
        if self.kind == POSITIONAL and len(values) != 1 and not self.many:
            raise InputError(f"{where}: `{self.dest}` takes one value, not {len(values)}")
        parsed = [self._convert(v, where) for v in values]
        return parsed if self.kind == REPEAT or self.many else parsed[-1]

    def _convert(self, word: str, where: str):
        try:
            value = self.type(word) if self.type else word
        except argparse.ArgumentTypeError as err:
            raise InputError(f"{where}: {self.dest}: {err}") from None
        except (TypeError, ValueError):
            raise InputError(f"{where}: {self.dest}: invalid {self.type.__name__} value: {word!r}") from None
        if self.choices and value not in self.choices:
            raise InputError(
                f"{where}: {self.dest}: invalid choice: {value!r} (choose from {', '.join(map(str, self.choices))})"
            )
        return value


def _unwrap(tp):
    """X out of `X | None`; `list[str]`'s own argument is not its type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _parsed_default(f: dataclasses.Field):
    """argparse's default: the field's, but None for a list (`make` gives each instance its own)."""
    return f.default if f.default is not MISSING else None


def _from_field(f: dataclasses.Field, tp, group: str | None) -> Arg:
    spec: Spec = f.metadata["arg"]
    base = _unwrap(tp)
    required = f.default is MISSING and f.default_factory is MISSING
    if spec.positional:
        # a positional with a default may be left out (`thresher presets [KIND]`); a list takes one or more
        many = typing.get_origin(base) is list
        item = typing.get_args(base)[0] if many else base
        return Arg(
            f.name,
            POSITIONAL,
            spec.help,
            type=None if item is str else item,
            default=_parsed_default(f),
            required=required,
            group=group,
            many=many,
        )
    kind, convert = VALUE, base
    if base is bool:
        kind, convert = FLAG, None
    elif typing.get_origin(base) is list:
        kind, convert = REPEAT, typing.get_args(base)[0]
    return Arg(
        f.name,
        kind,
        spec.help,
        spec.flags or ("--" + f.name.replace("_", "-"),),
        None if convert is str else convert,
        _parsed_default(f),
        required and kind != FLAG,
        spec.choices,
        spec.metavar,
        group,
    )


def _config_args(cls: type) -> list[Arg]:
    """Every field of a config dataclass as an option, typed from the field, help from its metadata:
    a bool is --X/--no-X, a list is comma-separated, a dict is K=V,... (all None when not given)."""
    group = f"{cls.__name__} fields (override --config)"
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        base = _unwrap(hints[f.name])
        flags = ("--" + f.name.replace("_", "-"),)
        text = f"{f.metadata.get('help', '')} (default: {_default(f)})"
        if base is bool:
            out.append(Arg(f.name, TOGGLE, text, flags, group=group))
        elif typing.get_origin(base) is list:
            out.append(Arg(f.name, CSV, text + "; comma-separated", flags, comma_list, metavar="A,B", group=group))
        elif typing.get_origin(base) is dict:
            out.append(Arg(f.name, MAPPING, text, flags, mapping, metavar="K=V,...", group=group))
        else:
            out.append(Arg(f.name, VALUE, text, flags, base, group=group))
    return out


@lru_cache(maxsize=None)
def arguments(cls: type, group: str | None = None) -> tuple[Arg, ...]:
    """A command's arguments in the order of its `args` dataclass (the order of its --help)."""
    hints = typing.get_type_hints(cls)
    out: list[Arg] = []
    for f in dataclasses.fields(cls):
        if "include" in f.metadata:
            out += arguments(f.metadata["include"], f.metadata["group"])
        elif "config" in f.metadata:
            out += _config_args(_config_class(f.metadata["config"]))
        else:
            out.append(_from_field(f, hints[f.name], group))
    return tuple(out)


def make(cls: type, values: dict):
    """An `args` instance from argument values by dest (a parsed command line, or a bound job step);
    an argument without a value, or None (argparse's "not given"), keeps its field's default."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if "include" in f.metadata:
            kwargs[f.name] = make(f.metadata["include"], values)
        elif "config" in f.metadata:
            names = (c.name for c in dataclasses.fields(_config_class(f.metadata["config"])))
            kwargs[f.name] = {n: values[n] for n in names if values.get(n) is not None}
        elif values.get(f.name) is not None:
            kwargs[f.name] = values[f.name]
    made = cls(**kwargs)
    if hasattr(made, "check"):  # rules across arguments (one of two outputs...), for a command line and a job alike
        made.check()
    return made


def bind(cls: type, words: dict[str, list[str]], where: str):
    """An `args` instance from each argument's command-line words (what `Arg.tokens` spelled), so a job
    step runs with exactly what its printed command line would parse to."""
    by_dest = {a.dest: a for a in arguments(cls)}
    values = {dest: by_dest[dest].parse(w, where) for dest, w in words.items() if w}
    try:
        return make(cls, values)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


@dataclass(frozen=True)
class Command:
    """One `thresher` command. `run(args)` returns an exit code (None: 0); `plan` estimates a job step of
    it (None: nothing to cost). A command with `actions` (audit) runs one of them instead."""

    name: str
    help: str
    example: str
    args: type
    run: Callable[[Any], int | None] | None
    plan: Callable[[Any, Sizes, dict, Cluster], Estimate] | None = None
    actions: dict[str, Command] | None = None

    def __post_init__(self):
        if (self.run is None) == (self.actions is None):
            raise TypeError(f"command {self.name}: give run or actions, not both or neither")


@dataclass(frozen=True)
class Call:
    """A command bound to its arguments: one command line, or one job step."""

    name: str  # the command as typed: `audit` for each of its actions
    command: Command  # what runs: the command, or the audit action
    args: Any

    def run(self) -> int:
        return self.command.run(self.args) or 0

    def on(self, ray_address: str) -> Call:
        return replace(self, args=replace(self.args, ray_address=ray_address))


# ---------------------------------------------------------------------------------------------------
# Shared by the commands


@args_dataclass
class Common:
    """Every command's argument."""

    ray_address: str | None = arg(None, "Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray instance)")


def _config_path(value: str | None, kind: str) -> Path | None:
    """A config given by path, or by preset name under configs/<kind>/."""
    if value is None:
        return None
    found = preset_or_path(value, CONFIG_DIR / kind)
    if found is not None:
        return found
    presets = sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))
    raise InputError(f"no config file {value!r} and no preset of that name in configs/{kind}/ (presets: {presets})")


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))
