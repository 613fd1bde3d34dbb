"""Typed configs: dataclasses loaded from YAML, each with a stable content hash.

Every stage takes one config dataclass. `load(cls, path, overrides)` reads YAML, rejects unknown or
ill-typed fields with an error naming the file and field, and applies CLI overrides on top.
`config_hash` is the sha256 of the canonical JSON of the config, so equal configs hash equal
whatever the key order or YAML formatting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thresher.core.errors import InputError

T = TypeVar("T")


def _config_dir() -> Path:
    """configs/: inside the installed package (thresher/configs), or at the top of a checkout, beside
    thresher/ (pyproject.toml ships the top-level configs/ and jobs/ into the wheel)."""
    package = Path(__file__).resolve().parent.parent
    return package / "configs" if (package / "configs").is_dir() else package.parent / "configs"


CONFIG_DIR = _config_dir()


def opt(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING):  # noqa: A002
    """A config field with its help text; the command registry (thresher/app/commands/: the flags) and
    docs/config-reference.md (thresher/app/reference.py) read it."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg) -> str:
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_type(value, tp, where: str):
    """Validate (and lightly coerce) one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(fields)}")
    kwargs = {name: _check_type(value, hints[name], f"{where}: field '{name}'") for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise InputError(f"{where}: required field(s) missing: {', '.join(missing)}")
    return cls(**kwargs)


def read_yaml(path: str | Path, what: str = "config file"):
    """A YAML file's data, or an InputError naming the file: unreadable, a directory, not UTF-8 text, or
    not valid YAML. Every YAML a user hands us (configs, recipes, jobs, scales) is read here."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a YAML file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {err.start}): not a YAML file") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from err
    return parse_yaml(text, str(path))


# A YAML file is bounded before it is built: aliases let 600 bytes stand for a billion values ("billion
# laughs"), which `substitute` then copies out (500 MB in 30 s), and 60,000 nested brackets ended in a
# RecursionError. No config, recipe or job comes near either limit.
YAML_MAX_VALUES = 1_000_000  # values once every alias is expanded (each use of an alias counts in full)
YAML_MAX_DEPTH = 100  # lists and mappings nested in each other


def parse_yaml(text: str, where: str):
    """YAML text's data, or an InputError naming `where`: not valid YAML, nested deeper than
    YAML_MAX_DEPTH, more than YAML_MAX_VALUES values with its aliases expanded, or an alias inside the
    collection it names (a structure that contains itself). The one YAML parser of user input."""
    try:
        _check_yaml_size(text, where)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None


def _check_yaml_size(text: str, where: str) -> None:
    """Walk the parser's events (a state machine, no recursion, nothing built): each collection's size
    with its aliases expanded, recorded under its anchor, so an alias costs what it stands for."""
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    stack: list[list] = []  # open collections: [anchor, values so far]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > YAML_MAX_DEPTH:
                raise InputError(
                    f"{where}: nested more than {YAML_MAX_DEPTH} levels deep (line {event.start_mark.line + 1}); "
                    f"a config, recipe or job needs a few"
                )
            continue
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in stack):
                raise InputError(
                    f"{where}: alias *{event.anchor} (line {event.start_mark.line + 1}) is inside the "
                    f"&{event.anchor} it refers to: a value cannot contain itself"
                )
            n = sizes.get(event.anchor, 1)  # an undefined alias: safe_load names it
        elif isinstance(event, yaml.ScalarEvent):
            n, anchor = 1, event.anchor
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, n = stack.pop()
        else:
            continue
        if not isinstance(event, yaml.AliasEvent) and anchor is not None:
            sizes[anchor] = n
        if stack:
            stack[-1][1] += n
        else:
            total += n
        if total + sum(size for _, size in stack) > YAML_MAX_VALUES:
            raise InputError(
                f"{where}: more than {YAML_MAX_VALUES:,} values once its aliases (*name) are expanded "
                f"(line {event.start_mark.line + 1}); write the values out, or use fewer aliases"
            )


def load(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Config from a YAML file (or defaults when path is None), then non-None overrides on top."""
    data: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        data = read_yaml(path) or {}
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return from_dict(cls, data, where)


# ---------------------------------------------------------------------------------------------------
# Names that become paths: the one rule

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(value, what: str, where: str) -> str:
    """A name that becomes a path component (recipe, scorer id, scale, job): letters, digits and
    `. _ + -`, starting with a letter or digit, at most 128 characters, never `..`. A recipe named `..`
    once replaced the pool's manifest.json, and `../shards` every shard's Parquet (issue 15), so every
    such name is checked here, before any work, and refused with the file and field that gave it."""
    if not isinstance(value, str) or not NAME_RULE.match(value) or ".." in value:
        raise InputError(
            f"{where}: {what} {value!r} cannot be used as a name: it becomes a folder or file "
            f"name, so it must be letters, digits and . _ + - (starting with a letter or digit, "
            f"no '..', at most 128 characters)"
        )
    return value


def substitute(value, variables: dict, where: str):
    """Replace `{name}` placeholders in strings, lists and mappings: the one rule of recipes' and jobs'
    `vars:`. A string that is one placeholder alone takes the variable's own type ("{size}" stays a
    number); inside a longer string it is formatted. An unknown name is an error naming the known ones."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\{(\w+)\}", value)
    if whole and whole.group(1) in variables:
        return variables[whole.group(1)]

    def one(m):
        if m.group(1) not in variables:
            raise InputError(
                f"{where}: unknown placeholder {{{m.group(1)}}}; known: {sorted(variables)} "
                f"(add it under `vars:` or pass --var {m.group(1)}=VALUE)"
            )
        return str(variables[m.group(1)])

    return re.sub(r"\{(\w+)\}", one, value)


def parse_vars(items: list[str] | None) -> dict:
    """`--var key=value` items (a command's, a job's) as the variables `substitute` fills in."""
    variables = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--var expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        variables[k] = parse_yaml(v, f"--var {k}") if v else v  # 100 -> int, 0.3 -> float, words stay strings
    return variables


def preset_or_path(value: str, directory: Path, suffix: str = ".yaml") -> Path | None:
    """The file `value` names: a path, or a preset `directory/VALUE{suffix}`; None if neither exists.
    A file at the path wins; a folder that only shares a preset's name (a run's `demo/` output) does not
    hide the preset."""
    path, preset = Path(value), directory / f"{value}{suffix}"
    if path.is_file() or (path.exists() and not preset.exists()):
        return path
    return preset if preset.exists() else None
