"""The command registry: every `thresher` command as one record, beneath the CLI, jobs and `--plan`.

A command is a `Command`: its name, help and example, `args` (a typed dataclass of its arguments),
`run(args)` (what it does) and `plan(args, sizes, throughputs, cluster)` (its `--plan` estimate), or,
for `audit`, `actions` (nested commands of the same shape). The three front ends read it:

- `thresher/app/cli.py` derives the argparse parser from the `args` dataclasses, turns what it parsed into
  an `args` instance and calls `run`;
- `thresher/app/jobs.py` checks a step's keys against the same dataclass, spells the step as the command
  line it prints and hashes (`Arg.tokens`), binds the values to an `args` instance (`bind`) and calls
  `run`;
- `thresher/app/plan.py` costs each step with the command's `plan`.

An argument is a dataclass field declared with `arg()` (`positional=True`; a `bool` is a flag; a `list`
is a repeatable option; a field without a default is required), `include()` (another dataclass's
fields as options here) or `config_group()` (every field of a config dataclass as an option that
overrides `--config`, as a dict of the fields given).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from thresher.app.plan import Cluster, Estimate, Sizes, embed_dim, gflops, param_count, rate, scorer_dim
from thresher.core.config import CONFIG_DIR, load, preset_or_path
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


def parse_vars(items: list[str] | None) -> dict:
    from thresher.core.config import parse_yaml

    variables = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--var expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        variables[k] = parse_yaml(v, f"--var {k}") if v else v  # 100 -> int, 0.3 -> float, words stay strings
    return variables


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))


def _with_ratio(key: str, scale: float) -> str:
    return key + ("" if scale == 1.0 else f" x{scale:.3g} (GFLOPs ratio)")


# ---------------------------------------------------------------------------------------------------
# synth, serve: the synthetic web


@args_dataclass
class SynthArgs(Common):
    out: str = arg(help="directory to write")
    config: str | None = arg(None, "YAML file or preset name in configs/synth/")
    overrides: dict = config_group("thresher.synthetic.synth.SynthConfig")


def _synth_config(args: SynthArgs):
    from thresher.synthetic.synth import SynthConfig

    return load(SynthConfig, _config_path(args.config, "synth"), args.overrides)


def run_synth(args: SynthArgs) -> None:
    """A synthetic pool with planted faults, its URL list and ground truth."""
    from thresher.synthetic.synth import generate

    generate(args.out, _synth_config(args))
    print(f"synthetic pool: {Path(args.out).resolve()}  (URL list: {Path(args.out).resolve() / 'urls.parquet'})")


def plan_synth(args: SynthArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    cfg = _synth_config(args)
    sizes.pool, sizes.trusted = cfg.samples, cfg.trusted  # what the steps after it read
    return Estimate(
        what=f"{sizes.pool:,} synthetic samples",
        inputs=["stages.synth"],
        cpu_s=sizes.pool / rate(t, "stages.synth"),
        disk_bytes=sizes.pool * sizes.bytes * 1.05,
    )


@args_dataclass
class ServeArgs(Common):
    dir: str = arg(help="directory written by `thresher synth`", positional=True)
    port: int = arg(8765)


def run_serve(args: ServeArgs) -> None:
    """Serve a synthetic pool over HTTP on 127.0.0.1 until interrupted."""
    from thresher.synthetic.serve import serve_forever

    serve_forever(args.dir, args.port)


# ---------------------------------------------------------------------------------------------------
# download, features, dedup, export-metadata: the pool


@args_dataclass
class DownloadArgs(Common):
    urls: str = arg(help="URL list: Parquet, CSV or JSONL (local path or s3://, gs://, ...)", positional=True)
    out: str = arg(help="pool directory (local path or s3://, gs://, ...)")
    config: str | None = arg(None, "YAML file or preset name in configs/download/")
    overrides: dict = config_group("thresher.stages.acquire.download.DownloadConfig")


def run_download(args: DownloadArgs) -> None:
    """A URL list into WebDataset shards with Parquet metadata; prints the pool's counts."""
    from thresher.stages.acquire.download import DownloadConfig, run

    cfg = load(DownloadConfig, _config_path(args.config, "download"), args.overrides)
    counts = run(args.urls, args.out, cfg, ray_address=args.ray_address)["counts"]
    print(f"pool: {args.out}")
    print(f"  rows {counts['rows']}, " + ", ".join(f"{k} {v}" for k, v in counts["status"].items()))
    if counts["failure"]:
        print("  failures: " + ", ".join(f"{k} {v}" for k, v in counts["failure"].items()))


def plan_download(args: DownloadArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n = sizes.downloaded
    e = Estimate(
        what=f"{sizes.pool:,.0f} URLs, {n:,.0f} arrive",
        inputs=["stages.download"],
        cpu_s=sizes.pool / rate(t, "stages.download"),
        disk_bytes=n * sizes.bytes,
    )
    if cluster.name != "local":  # internet downloads: img2dataset's per-node rate bounds us
        e.inputs.append("download.img2dataset_node")
        e.cpu_s = max(e.cpu_s, sizes.pool / (rate(t, "download.img2dataset_node") / 16))
    return e


@args_dataclass
class ScorerSettings:
    """The ScorerConfig fields `thresher features` sets for every scorer (None: the config's default)."""

    batch_size: int | None = arg(None, "images per model call (default 256)")
    device: str | None = arg(None, "auto, cpu or cuda (default auto)")
    precision: str | None = arg(None, "auto, fp32, fp16 or bf16 (default auto)")
    actors: int | None = arg(None, "model actors; 0 = one per GPU or one on CPU (default 0)")
    actor_cpus: float | None = arg(None, "CPUs per model actor (default 1)")
    decode: str | None = arg(None, "where JPEGs are decoded: auto, cpu or actor (default auto: actor on a GPU)")


@args_dataclass
class FeaturesArgs(Common):
    pool: str = arg(help="pool directory written by `thresher download`", positional=True)
    model: list[str] = arg(help="open_clip model name (repeatable; one scorer each)", factory=list)
    pretrained: list[str] = arg(
        help="pretrained tag or checkpoint path for the matching --model; 'none' = random init", factory=list
    )
    scorer_id: list[str] = arg(help="output name for the matching --model, e.g. clip_b32", factory=list)
    no_base: bool = arg(False, "skip the scorer-independent base features")
    precomputed: list[str] = arg(
        help="use a score column the input metadata already had (carried by download "
        "--extra-columns), e.g. clip_l14=clip_l14_similarity_score; repeatable",
        metavar="SCORER_ID=COLUMN",
        factory=list,
    )
    npz_dir: str | None = arg(None, "with --precomputed: DataComp metadata dir of X.parquet + X.npz")
    npz_img_key: str = arg("l14_img", "image-embedding array in the .npz (default l14_img)")
    npz_txt_key: str = arg("l14_txt", "text-embedding array in the .npz (default l14_txt)")
    shared: ScorerSettings = include(ScorerSettings, "settings shared by every scorer")


def _scorers(args: FeaturesArgs) -> list:
    """One ScorerConfig per --model, paired in order with --pretrained and --scorer-id."""
    from thresher.stages.features.features import ScorerConfig

    if len(args.pretrained) > len(args.model) or len(args.scorer_id) > len(args.model):
        raise InputError("give one --model per --pretrained and per --scorer-id (they pair up in order)")
    shared = {k: v for k, v in dataclasses.asdict(args.shared).items() if v is not None}
    scorers = []
    for i, model in enumerate(args.model):
        pretrained = args.pretrained[i] if i < len(args.pretrained) else None
        scorer_id = (
            args.scorer_id[i]
            if i < len(args.scorer_id)
            else "clip_" + model.lower().replace("-", "_").replace("/", "_")
        )
        scorers.append(
            load(
                ScorerConfig,
                None,
                {
                    **shared,
                    "model": model,
                    "scorer_id": scorer_id,
                    "pretrained": None if pretrained in (None, "none") else pretrained,
                },
            )
        )
    return scorers


def run_features(args: FeaturesArgs) -> None:
    """Imported scores (--precomputed), base features, then each --model's embeddings and scores."""
    from thresher.stages.features.features import import_precomputed, run_base, run_scorer

    scorers = _scorers(args)
    for spec in args.precomputed:
        scorer_id, sep, column = spec.partition("=")
        if not sep:
            raise InputError(
                f"--precomputed takes SCORER_ID=COLUMN, e.g. clip_l14=clip_l14_similarity_score; got {spec!r}"
            )
        import_precomputed(
            args.pool,
            scorer_id,
            column,
            npz_dir=args.npz_dir,
            npz_img_key=args.npz_img_key,
            npz_txt_key=args.npz_txt_key,
        )
    if not args.no_base:
        result = run_base(args.pool, ray_address=args.ray_address)
        print(f"base features: {result['complete']}/{result['shards']} shards in {args.pool}/features/base")
    for cfg in scorers:
        manifest = run_scorer(args.pool, cfg, ray_address=args.ray_address)
        print(
            f"{cfg.scorer_id}: {manifest['shards']['complete']}/{manifest['shards']['total']} shards, "
            f"weights {manifest['weights']['kind']}, device {manifest['device']} -> {args.pool}/features/{cfg.scorer_id}"
        )


def plan_features(args: FeaturesArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n, e, parts = sizes.downloaded, Estimate(), []
    if not args.no_base:
        e.cpu_s += n / rate(t, "stages.features_base")
        e.inputs.append("stages.features_base")
        e.disk_bytes += n * 200
        parts.append("base")
    for m in args.model:
        e.disk_bytes += n * (2 * embed_dim(m) * rate(t, "features.embedding_bytes") + 60)
        if cluster.gpus and f"features.gpu_{m}" in t:
            e.gpu_s += n / rate(t, f"features.gpu_{m}")
            e.cpu_s += n / rate(t, "features.decode_224")
            e.inputs += [f"features.gpu_{m}", "features.decode_224"]
            e.object_store_bytes = max(e.object_store_bytes, cluster.gpus * 4 * 512 * 150_000)
        else:
            key = f"features.cpu_{m}" if f"features.cpu_{m}" in t else "features.cpu_thresher-tiny"
            scale = 1.0 if key.endswith(m) else gflops(m) / gflops("thresher-tiny")
            e.cpu_s += n * scale / rate(t, key)
            e.inputs.append(_with_ratio(key, scale))
        parts.append(m)
    for spec in args.precomputed:
        e.cpu_s += n / rate(t, "filter.stage")
        e.inputs.append("filter.stage")
        parts.append(f"imported {spec.split('=')[0]}")
    e.what = f"{n:,.0f} samples: " + ", ".join(parts)
    return e


@args_dataclass
class DedupArgs(Common):
    pool: str = arg(help="pool with base features (and the scorer's embeddings for the semantic step)", positional=True)
    config: str | None = arg(None, "YAML file or preset name in configs/dedup/")
    overrides: dict = config_group("thresher.stages.dedup.dedup.DedupConfig")


def _dedup_config(args: DedupArgs):
    from thresher.stages.dedup.dedup import DedupConfig

    return load(DedupConfig, _config_path(args.config, "dedup"), args.overrides)


def run_dedup(args: DedupArgs) -> None:
    """Exact, perceptual and semantic duplicates and evaluation-set contamination."""
    from thresher.stages.dedup.dedup import run

    manifest = run(args.pool, _dedup_config(args), ray_address=args.ray_address)
    print(
        f"dedup: kept {manifest['kept']} of {manifest['samples']}; removed {manifest['removed']} -> {args.pool}/dedup"
    )


def plan_dedup(args: DedupArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    cfg, n = _dedup_config(args), sizes.downloaded
    return _dedup_partitioned(cfg, n, t) if cfg.partitions else _dedup_in_process(cfg, n, t, cluster)


PDQ_CORE_SECONDS_WARN = 3600 * 1000  # a thousand core-hours


def _dedup_partitioned(cfg, n: float, t: dict) -> Estimate:
    """Ray tasks over partitions: spread over the cluster, ~100 B a row staged for exact."""
    e = Estimate(
        what=f"{n:,.0f} samples: exact",
        cpu_s=n / rate(t, "scale.dedup_exact"),
        inputs=["scale.dedup_exact"],
        disk_bytes=n * 80 + n * 100,
    )
    e.cores = cfg.partitions  # each round has a task per partition (or shard group) at most
    if cfg.perceptual:  # a bucket per (byte, value): 1/256 of the hashes each, searched pairwise
        comparisons = n * n / 16
        e.cpu_s += comparisons / rate(t, "dedup.pdq_partitioned_comparisons")
        e.inputs.append("dedup.pdq_partitioned_comparisons")
        e.disk_bytes += n * 32 * 41  # each hash staged once per byte, with its code
        e.what += f", PDQ ({comparisons:.2g} comparisons)"
        if comparisons / rate(t, "dedup.pdq_partitioned_comparisons") > PDQ_CORE_SECONDS_WARN:
            e.warnings.append(
                f"partitioned PDQ dedup grows with the square of the pool ({comparisons:.2g} code comparisons): "
                "past ~1e8 hashes it costs thousands of core-hours; run it on a sample, or with --no-perceptual"
            )
    if cfg.semantic:  # the shuffle stages each embedding once, as float16
        k = cfg.clusters or max(1, int(n // 1000))
        flops = n * (n / k) * 512 * 2
        e.cpu_s += flops / rate(t, "dedup.semantic_flops")
        e.inputs.append("dedup.semantic_flops")
        e.disk_bytes += n * 512 * 2
        e.what += f", SemDeDup ({flops:.2g} flops within clusters;"
        # its k-means as tasks (thresher/algo/kmeans.py) on up to 256 rows a centroid, every row assigned once
        _kmeans_estimate(e, t, k, 512, n, 256 * k, n, cfg.kmeans_iters, cfg.kmeans_flat_max)
        e.what += ")"
    e.what += f" over {cfg.partitions} partitions (Ray tasks)"
    return e


def _dedup_in_process(cfg, n: float, t: dict, cluster: Cluster) -> Estimate:
    # in one process: the figure was measured on 2 cores, and that is all it gets on a cluster too; it
    # holds the base columns (uid, key, sha256, PDQ: ~250 B a row) and, for SemDeDup, the embeddings
    e = Estimate(
        what=f"{n:,.0f} samples: exact, PDQ (in one process)",
        cpu_s=n / rate(t, "stages.dedup_exact_pdq"),
        inputs=["stages.dedup_exact_pdq"],
        cores=2,
        driver_bytes=n * 250,
    )
    if cfg.semantic:
        k = cfg.clusters or max(1, int(n // 1000))
        flops = n * (n / k) * cfg.probes * 512 * 2
        if cluster.gpus:
            e.gpu_s = flops / (rate(t, "dedup.semantic_flops") * 16 * rate(t, "dedup.semantic_gpu_speedup"))
            e.inputs += ["dedup.semantic_flops", "dedup.semantic_gpu_speedup"]
        else:
            e.cpu_s += flops / rate(t, "dedup.semantic_flops")
            e.inputs.append("dedup.semantic_flops")
        e.object_store_bytes = n * 512 * 4
        e.driver_bytes += n * 512 * 4
        e.what += f", SemDeDup ({k:,} clusters, {flops:.2g} flops)"
    e.disk_bytes = n * 80
    return e


@args_dataclass
class ExportMetadataArgs(Common):
    pool: str = arg(positional=True)
    out: str = arg(help="Parquet file to write")


def run_export_metadata(args: ExportMetadataArgs) -> None:
    """A pool's metadata under DataComp's column names."""
    from thresher.stages.subset.export import export_metadata

    table = export_metadata(args.pool, args.out)
    print(f"wrote {table.num_rows} rows in DataComp's columns to {args.out}")


@args_dataclass
class ImportMetadataArgs(Common):
    metadata: list[str] = arg(
        help="DataComp-format metadata Parquet: files, directories of them, or globs", positional=True
    )
    out: str = arg(help="pool directory to make (no images: filters that need no pixels run on it)")
    npz_dir: str | None = arg(None, "directory of DataComp's STEM.npz embeddings, one per STEM.parquet")
    scorer: list[str] = arg(
        help="ID=COLUMN[:NPZ_PREFIX], repeatable: a score column as a scorer (default: "
        "clip_b32=clip_b32_similarity_score:b32 and clip_l14=clip_l14_similarity_score:l14)",
        factory=list,
    )
    samples_per_shard: int = arg(10000, "rows per pool shard (default 10000, as DataComp's)")


def run_import_metadata(args: ImportMetadataArgs) -> None:
    """A pool without images from DataComp-format metadata, its scores as scorers."""
    from thresher.stages.acquire.importing import ScorerSource, import_metadata

    scorers = [ScorerSource.parse(s) for s in args.scorer] or None
    m = import_metadata(
        args.metadata, args.out, args.npz_dir, scorers, args.samples_per_shard, ray_address=args.ray_address
    )
    names = ", ".join(s["scorer_id"] for s in m["config"]["scorers"]) or "none"
    print(f"imported {m['counts']['rows']} rows in {m['shards']['complete']} shards (scorers: {names}) -> {args.out}")


def plan_import(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(
        what=f"{sizes.pool:,.0f} rows imported",
        inputs=["scale.import_metadata"],
        cpu_s=sizes.pool / rate(t, "scale.import_metadata"),
    )


@args_dataclass
class ImportPoolArgs(Common):
    dir: str = arg(help="img2dataset's output folder ({i:05d}.tar, .parquet, _stats.json)", positional=True)
    out: str = arg(help="pool directory to make (the tars stay where they are)")
    uid_col: str = arg(
        "uid",
        "column of img2dataset's Parquet with the uid (save_additional_columns); "
        "when absent, uid = sha256(url NUL caption)[:32] as download makes it",
    )


def run_import_pool(args: ImportPoolArgs) -> None:
    """A pool from shards img2dataset already wrote, without copying or re-downloading the images."""
    from thresher.stages.acquire.importing import import_pool

    m = import_pool(args.dir, args.out, args.uid_col, ray_address=args.ray_address)
    ok = m["counts"]["status"].get("success", 0)
    print(f"adopted {m['shards']['complete']} shards, {ok} of {m['counts']['rows']} rows downloaded -> {args.out}")


# ---------------------------------------------------------------------------------------------------
# filter, filters, subset: recipes and subsets


@args_dataclass
class FilterArgs(Common):
    pool: str = arg(help="pool with the features (and dedup results) the recipe reads", positional=True)
    recipe: list[str] = arg(help="preset name in configs/recipes/ or a YAML file; repeat for several")
    var: list[str] = arg(help="key=value for {key} placeholders in the recipe", factory=list)


def run_filter(args: FilterArgs) -> None:
    """Each recipe's per-sample decisions and funnel."""
    from thresher.stages.filter.filter import run

    variables = parse_vars(args.var)
    for recipe in args.recipe:
        manifest = run(args.pool, recipe, variables, ray_address=args.ray_address)
        print(
            f"filter {manifest['recipe']}: kept {manifest['kept']} of {manifest['samples']} -> "
            f"{args.pool}/decisions/{manifest['recipe']} (funnel in {args.pool}/stats/filter-{manifest['recipe']}.json)"
        )


def plan_filter(args: FilterArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.algo import kmeans
    from thresher.filters.builtin import ImageClusters
    from thresher.stages.filter.filter import load_recipe

    n, recipes = sizes.downloaded, len(args.recipe)
    e = Estimate(
        what=f"{recipes} recipe(s) x {n:,.0f} samples",
        inputs=["scale.filter"],
        cpu_s=recipes * n / rate(t, "scale.filter"),
        disk_bytes=recipes * n * 60,
    )
    for recipe in args.recipe:  # pool-wide work a step prepares first: image_clusters' k-means
        try:
            steps = load_recipe(recipe, parse_vars(args.var))[1]
        except InputError:  # a plugin not installed here, a file an earlier step makes: the run will say
            e.what += f"; {recipe}: steps not read (loads at run time)"
            continue
        for step in steps:
            if isinstance(p := step.params, ImageClusters):
                k = max(1, min(p.clusters, int(min(p.sample, n)) // 10))
                train = min(p.sample, kmeans.POINTS_PER_CENTROID * k)
                e.what += f"; {step.name}:"
                _kmeans_estimate(e, t, k, scorer_dim(p.scorer), n, train, n, p.iters, p.flat_max)
                e.driver_bytes = max(e.driver_bytes, k * scorer_dim(p.scorer) * 4)  # the fine centroids, loaded
    return e


def _kmeans_estimate(e: Estimate, t: dict, k: int, d: int, rows, train, assign, iters: int, flat_max: int) -> None:
    """k-means as tasks (`kmeans.cost`: training, then `assign` rows to their nearest centroid) added to a
    step's estimate; its training rows are staged on storage as float16."""
    from thresher.algo import kmeans

    c = kmeans.cost(k, d, rows, train, assign, iters, flat_max)
    e.cpu_s += c.flops / rate(t, "kmeans.flops")
    e.inputs.append("kmeans.flops")
    e.disk_bytes += min(rows, train) * d * 2  # staged while it runs (removed after)
    e.driver_bytes = max(e.driver_bytes, c.driver_bytes)
    e.what += f" {c.describe(k)}"


@args_dataclass
class FiltersArgs(Common):
    pass


def run_filters(args: FiltersArgs) -> None:
    """The registered filters, built-in and from plugins, with their one-line docs."""
    from thresher.filters import api

    for name, spec in api.known().items():
        print(f"{name:22s} {spec.doc}")


# what `thresher presets` lists: kind -> (folder under the bundled configs, file suffix)
PRESET_KINDS = {
    "download": ("download", ".yaml"),
    "synth": ("synth", ".yaml"),
    "dedup": ("dedup", ".yaml"),
    "recipes": ("recipes", ".yaml"),
    "scales": ("scales", ".yaml"),
    "models": ("models", ".json"),
    "classes": ("classes", ".txt"),
    "cluster": ("cluster", ".yaml"),
    "jobs": ("../jobs", ".yaml"),
}


@args_dataclass
class PresetsArgs(Common):
    kind: str | None = arg(None, f"one kind: {', '.join(PRESET_KINDS)} (default: all)", positional=True)


def run_presets(args: PresetsArgs) -> None:
    """What ships inside the package: names any --config, --recipe, --scale, --model or job takes."""
    if args.kind is not None and args.kind not in PRESET_KINDS:
        raise InputError(f"no preset kind {args.kind!r}; kinds: {', '.join(PRESET_KINDS)}")
    for kind, (folder, suffix) in PRESET_KINDS.items():
        if args.kind in (None, kind):
            names = sorted(p.name[: -len(suffix)] for p in (CONFIG_DIR / folder).glob(f"*{suffix}"))
            print(f"{kind:9s} {' '.join(names)}")


@args_dataclass
class SubsetArgs(Common):
    pool: str = arg(
        help="pool with the recipes' decisions (the filter runs first where they are missing)", positional=True
    )
    recipe: list[str] = arg(help="preset name or YAML file; repeat for equal-sized subsets of several recipes")
    size: int | None = arg(
        None, "samples in each subset (exactly); required with --out, optional with --uids-only (default: all kept)"
    )
    out: str | None = arg(None, "subset directory (one recipe) or parent of OUT/RECIPE (several)")
    uids_only: str | None = arg(
        None,
        "write the selection as DataComp's uid file (FILE.npy: sorted u8,u8) instead of resharding; "
        "without --size, every sample the recipe keeps",
        metavar="FILE.npy",
    )
    seed: int = arg(0, "seed of the uniform draw and the shuffle (default 0)")
    samples_per_shard: int = arg(10000, "samples per output shard (default 10000)")
    allow_repeat: bool = arg(False, "upsample a recipe that keeps fewer than --size samples instead of failing")
    draws: int = arg(
        1,
        "independent draws per recipe (seeds SEED, SEED+1, ...), each in OUT[/RECIPE]/draw-K: "
        "replicates for an A/B comparison (default 1)",
    )
    var: list[str] = arg(help="key=value for the recipes' {key} placeholders", factory=list)

    def check(self) -> None:
        if bool(self.out) == bool(self.uids_only):
            raise InputError("subset: give --out DIR (a resharded subset) or --uids-only FILE.npy, one of the two")
        if self.out and self.size is None:
            raise InputError("subset: --size is required with --out (a resharded subset holds exactly N samples)")
        if self.uids_only and (len(self.recipe) != 1 or self.draws != 1 or self.allow_repeat):
            raise InputError(
                "subset --uids-only: one --recipe, one draw and no --allow-repeat (a uid file holds a uid once)"
            )


def run_subset(args: SubsetArgs) -> None:
    """Exactly N samples per recipe, resharded, with a manifest and lineage; or, with --uids-only, the
    selection as DataComp's uid file."""
    from thresher.stages.subset.subset import SubsetConfig, run, target_dir, write_uid_file

    if args.uids_only:
        m = write_uid_file(
            args.pool,
            args.recipe[0],
            args.uids_only,
            size=args.size,
            seed=args.seed,
            variables=parse_vars(args.var) or None,
            ray_address=args.ray_address,
        )
        print(
            f"subset {m['plan']['recipe']}: {m['samples']} uids ({m['selection']['mode']} of "
            f"{m['selection']['kept_by_recipe']} kept) -> {args.uids_only}"
        )
        return
    cfg = SubsetConfig(
        size=args.size,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        allow_repeat=args.allow_repeat,
        draws=args.draws,
    )
    results = run(args.pool, args.recipe, cfg, args.out, parse_vars(args.var) or None, ray_address=args.ray_address)
    for name, m in results.items():
        where = target_dir(args.out, m["recipe"], len(args.recipe), m["draw"]["index"], args.draws)
        rep = f", repeated ({m['selection']['repeat']})" if m["selection"]["repeat"] else ""
        print(
            f"subset {name}: {m['size']} samples ({m['selection']['mode']} of {m['selection']['kept_by_recipe']} "
            f"kept{rep}) in {len(m['shards'])} shards -> {where}"
        )


def plan_subset(args: SubsetArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    if args.uids_only:
        return Estimate(
            what=f"{args.recipe[0]} as a uid file",
            inputs=["scale.subset_uids"],
            cpu_s=sizes.downloaded / rate(t, "scale.subset_uids"),
        )
    recipes, size, out = args.recipe, args.size, args.out
    for r in recipes:  # what the audit steps after it read
        sizes.subsets[out if len(recipes) == 1 else os.path.join(out, Path(r).stem)] = size
    cpu_s = len(recipes) * (
        sizes.downloaded / rate(t, "subset.select") + size * sizes.bytes / rate(t, "subset.reshard_bytes")
    )
    return Estimate(
        what=f"{len(recipes)} x {size:,} samples resharded",
        inputs=["subset.select", "subset.reshard_bytes"],
        cpu_s=cpu_s,
        disk_bytes=len(recipes) * size * (sizes.bytes + 300),
    )


# ---------------------------------------------------------------------------------------------------
# audit: nested commands (audit verify|trace|explain|report|remove|recheck)


def _audited(sizes: Sizes, path: str) -> int:
    """Samples in the subset a step audits: the one a subset step of the job made, else the largest."""
    return sizes.subsets.get(path, max(sizes.subsets.values(), default=0))


def _rehash(action: str, subset: str, sizes: Sizes, t: dict) -> Estimate:
    size = _audited(sizes, subset)
    return Estimate(
        what=f"{action} on {size:,} samples",
        inputs=["subset.reshard_bytes"],
        cpu_s=size * sizes.bytes / rate(t, "subset.reshard_bytes"),
    )


@args_dataclass
class AuditArgs(Common):
    pass


@args_dataclass
class VerifyArgs(Common):
    subset: str = arg(positional=True)


def run_verify(args: VerifyArgs) -> int:
    """Re-hash every shard and sample; exit code 1 when anything differs from the manifest and lineage."""
    from thresher.audit import audit

    res = audit.verify(args.subset, ray_address=args.ray_address)
    for p in res["problems"]:
        print(p)
    print(
        f"verify {args.subset}: {'OK' if res['ok'] else 'FAILED'} ({res['shards']} shards, "
        f"{res['samples']} samples, {len(res['problems'])} problem(s))"
    )
    return 0 if res["ok"] else 1


def plan_verify(args: VerifyArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return _rehash("verify", args.subset, sizes, t)


@args_dataclass
class TraceArgs(Common):
    subset: str = arg(positional=True)
    uid: str = arg(positional=True)


def run_trace(args: TraceArgs) -> None:
    """A subset sample's whole history, as JSON."""
    from thresher.audit import audit

    _print_json(audit.trace(args.subset, args.uid))


def plan_trace(args: TraceArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(what=f"trace on {_audited(sizes, args.subset):,} samples")


@args_dataclass
class ExplainArgs(Common):
    pool: str = arg(positional=True)
    uid: str = arg(positional=True)
    recipe: list[str] = arg(help="recipe(s) to explain (default: every recipe with decisions)", factory=list)


def run_explain(args: ExplainArgs) -> None:
    """Why a pool sample was dropped, per recipe: the step, its score and threshold."""
    from thresher.audit import audit

    res = audit.explain(args.pool, args.uid, args.recipe or None)
    _print_json(res)
    for name, r in res.get("recipes", {}).items():
        print(f"{name}: {r['verdict']}")
    if "verdict" in res:
        print(res["verdict"])


def plan_explain(args: ExplainArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(what=f"explain on {_audited(sizes, args.pool):,} samples")


@args_dataclass
class ReportArgs(Common):
    subset: str = arg(positional=True)
    out: str = arg(help="HTML file to write (outside the subset directory)")


def run_report(args: ReportArgs) -> None:
    """One HTML page about a subset: funnel, domains, languages, sizes, scores, opt-outs."""
    from thresher.audit import report

    res = report.build_report(args.subset, args.out)
    print(
        f"report: {res['out']} (plots: {', '.join(res['plots'])}; opt-out compliant: {res['compliance']['compliant']})"
    )


def plan_report(args: ReportArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    size = _audited(sizes, args.subset)
    return Estimate(
        what=f"report on {size:,} samples", inputs=["stages.audit_report"], cpu_s=size / rate(t, "stages.audit_report")
    )


@args_dataclass
class RemoveArgs(Common):
    subset: str = arg(positional=True)
    urls: str | None = arg(None, "file of URLs to remove, one per line")
    domains: str | None = arg(None, "file of domains to remove (with their subdomains), one per line")
    out: str = arg(help="directory of the new version")
    refill: bool = arg(False, "top back up to N from the next-ranked candidates")


def run_remove(args: RemoveArgs) -> None:
    """A new version of a subset without the samples takedown or opt-out requests name."""
    from thresher.audit import audit

    if not (args.urls or args.domains):
        raise InputError("give --urls FILE and/or --domains FILE")
    m = audit.remove(args.subset, args.out, args.urls, args.domains, refill=args.refill, ray_address=args.ray_address)
    print(
        f"new version: {args.out} ({m['size']} samples; removed {m['previous']['removed']}"
        f"{', refilled' if args.refill else ''}; previous {args.subset})"
    )


def plan_remove(args: RemoveArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return _rehash("remove", args.subset, sizes, t)


@args_dataclass
class RecheckArgs(Common):
    subset: str = arg(positional=True)
    sample: int = arg(1000, "URLs to re-download (default 1000)")
    seed: int = arg(0)
    timeout: float = arg(10.0, "seconds a whole fetch may take, redirects included (default 10)")
    allow_private_addresses: bool = arg(False, "fetch loopback/private hosts (tests)")
    allow_hosts: list[str] = arg(
        help="HOST or HOST:PORT fetched although private (an internal mirror), as at download", factory=list
    )
    out: str | None = arg(None, "JSON file for the per-URL results")


def run_recheck(args: RecheckArgs) -> None:
    """Re-download a random sample of a subset's URLs: link rot, content drift, new opt-outs."""
    from thresher.audit import audit

    res = audit.recheck(
        args.subset,
        args.sample,
        seed=args.seed,
        timeout=args.timeout,
        allow_private_addresses=args.allow_private_addresses,
        allow_hosts=args.allow_hosts,
        ray_address=args.ray_address,
    )
    if args.out:
        import json

        Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        f"recheck {args.subset}: {res['checked']} URLs; gone {res['gone_rate']:.1%}, drifted "
        f"{res['drifted_rate']:.1%}, opted out {res['opted_out_rate']:.1%}, refused {res['refused_rate']:.1%}"
    )


def plan_recheck(args: RecheckArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    return Estimate(
        what=f"recheck of {args.sample:,} URLs",
        inputs=["stages.download"],
        cpu_s=args.sample / rate(t, "stages.download"),
    )


AUDIT_ACTIONS = {
    "verify": Command(
        "verify",
        "re-hash every shard and sample against the manifest and lineage",
        "",
        VerifyArgs,
        run_verify,
        plan_verify,
    ),
    "trace": Command("trace", "the whole history of a sample in a subset", "", TraceArgs, run_trace, plan_trace),
    "explain": Command(
        "explain",
        "why a pool sample was dropped: the step, its score and threshold",
        "",
        ExplainArgs,
        run_explain,
        plan_explain,
    ),
    "report": Command(
        "report",
        "an HTML report: funnel, domains, languages, sizes, scores, opt-outs",
        "",
        ReportArgs,
        run_report,
        plan_report,
    ),
    "remove": Command(
        "remove",
        "a new version without the samples of takedown/opt-out requests",
        "",
        RemoveArgs,
        run_remove,
        plan_remove,
    ),
    "recheck": Command(
        "recheck",
        "re-download a random sample of URLs: link rot and content drift",
        "",
        RecheckArgs,
        run_recheck,
        plan_recheck,
    ),
}


# ---------------------------------------------------------------------------------------------------
# grid, fit, compare: scaling laws and the A/B verdict


@args_dataclass
class GridArgs(Common):
    subset: list[str] = arg(help="a subset directory (repeatable)")
    scale: list[str] = arg(
        help="scale preset, SET/NAME or YAML file (repeatable; a set such as tiny adds all its scales)"
    )
    eval_set: list[str] = arg(help="evaluation set directory (repeatable)")
    cpus_per_run: int | None = arg(None, "CPUs per run without GPUs (default: all)")
    replicates: str = arg(
        "crossed",
        "with several draws of a recipe and seeds: train every draw with every seed "
        "(crossed), or draw k with the k-th seed only (paired: each replicate its own "
        "draw and seed)",
        choices=("crossed", "paired"),
    )
    out: str = arg(help="grid directory (runs/ and results.csv)")


def run_grid(args: GridArgs) -> None:
    """Every (subset, scale) pair trained and evaluated as a Ray task, into results.csv."""
    from thresher.experiments.grid import run_grid as grid

    res = grid(
        args.subset,
        args.scale,
        args.eval_set,
        args.out,
        cpus_per_run=args.cpus_per_run,
        ray_address=args.ray_address,
        replicates=args.replicates,
    )
    print(f"grid: {res['runs']} runs, {res['rows']} data points -> {res['results']}")


def plan_grid(args: GridArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.experiments import train

    subsets = args.subset
    scales = [s for spec in args.scale for s in train.load_scales(spec)]
    names, seeds = len({s.name for s in scales}), len({s.seed for s in scales})
    paired = args.replicates == "paired"
    per_subset = names if paired else len(scales)  # paired: each draw trains with one seed of each scale
    e = Estimate(
        what=f"{len(subsets)} subsets x {names} scales"
        + (f" x {seeds} seeds" if seeds > 1 else "")
        + (" (paired with draws)" if paired else "")
        + f" = {len(subsets) * per_subset} runs"
    )
    share = per_subset / len(scales)
    for sc in scales:
        gpu_key = f"train.gpu_{sc.model}"
        if cluster.gpus and (gpu_key in t or "train.gpu_ViT-B-32" in t):
            key = gpu_key if gpu_key in t else "train.gpu_ViT-B-32"
            scale = 1.0 if key == gpu_key else gflops(sc.model) / gflops("ViT-B-32")
            e.gpu_s += (
                share
                * len(subsets)
                * (sc.samples_seen * scale / rate(t, key) + sc.checkpoints * rate(t, "train.gpu_eval_seconds"))
            )
        else:
            key = f"train.cpu_{sc.model}" if f"train.cpu_{sc.model}" in t else "train.cpu_thresher-tiny"
            scale = 1.0 if key == f"train.cpu_{sc.model}" else gflops(sc.model) / gflops("thresher-tiny")
            e.cpu_s += share * len(subsets) * sc.samples_seen * scale / rate(t, key) * 2  # per 2-core run
        if _with_ratio(key, scale) not in e.inputs:
            e.inputs.append(_with_ratio(key, scale))
        e.disk_bytes += share * len(subsets) * sc.checkpoints * param_count(sc.model) * 4 * 3  # weights + Adam moments
    return e


@args_dataclass
class FitFlags:
    """The fitting options `thresher fit` and `thresher compare` share."""

    bootstrap: int = arg(200, "bootstrap resamples (default 200)")
    bins_per_decade: float = arg(4.0, "log-spaced frontier bins (default 4)")
    forms: str = arg("power,offset", "laws to try: power (A C^-a + E), offset (A (C+C0)^-a + E)")
    frontier: str = arg(
        "bins",
        "bins: --bins-per-decade log10 bins (default); laion: Nezhurina et al.'s rule, "
        "int(log2(x_max/1500)) geometric bins (x in GFLOPs)",
        choices=("bins", "laion"),
    )
    loss: str = arg(
        "log",
        "least squares on log-errors (default) or on raw errors (mse, as LAION's published fits)",
        choices=("log", "mse"),
    )


def plan_fits(args, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    """fit and compare: seconds on one core, whatever the cluster (not measured: a fixed 10 s)."""
    return Estimate(what=f"scaling-law fits with {args.options.bootstrap} bootstraps", cpu_s=10.0)


@args_dataclass
class FitArgs(Common):
    results: str = arg(help="CSV or Parquet: ours (thresher grid) or a published table", positional=True)
    x: str = arg(help="compute column, e.g. gflops_total")
    y: str = arg(help="error column (or accuracy with --accuracy)")
    group: str | None = arg(None, "fit one law per value of this column, e.g. recipe")
    accuracy: bool = arg(False, "y is an accuracy: fit 1 - y")
    holdout_above: float | None = arg(
        None,
        "fit only x <= this; report the rest (held out) against the bands",
        flags=("--holdout-above", "--fit-below"),
    )
    predict: list[float] = arg(help="x to predict at (repeatable)", factory=list)
    options: FitFlags = include(FitFlags)
    seed: int = arg(0)
    out: str = arg(help="directory for fits.json and fits.png")


def run_fit(args: FitArgs) -> None:
    """Scaling laws fitted to a results table; prints each group's law, CIs and predictions."""
    from thresher.experiments.scaling import fit_table

    o = args.options
    res = fit_table(
        args.results,
        args.x,
        args.y,
        args.group,
        args.out,
        accuracy=args.accuracy,
        holdout_above=args.holdout_above,
        predict=args.predict,
        n_bootstrap=o.bootstrap,
        bins_per_decade=o.bins_per_decade,
        forms=tuple(o.forms.split(",")),
        seed=args.seed,
        frontier=o.frontier,
        loss=o.loss,
    )
    for name, g in res["groups"].items():
        print(f"{name}: err = {_law(g)} ({len(g['frontier'])} frontier points{_fit_notes(g)})")
        for pr in g["predictions"]:
            print(f"  predicted at {pr['x']:.4g}: {pr['y']:.4f} (95% CI {pr['lo']:.4f}-{pr['hi']:.4f})")
    print(f"wrote {args.out}/fits.json and {args.out}/fits.png")


def _law(g: dict) -> str:
    p = g["params"]
    return (
        f"{p['A']:.4g} * C^-{p['alpha']:.4f} + {p['E']:.4f}"
        if g["form"] == "power"
        else f"{p['A']:.4g} * (C + {p['C0']:.4g})^-{p['alpha']:.4f} + {p['E']:.4f}"
    )


def _fit_notes(g: dict) -> str:
    ci = g["params_ci95"].get("alpha")
    extra = f"; alpha 95% CI {ci[0]:.4f}-{ci[1]:.4f}" if ci else ""
    hold = g.get("holdout")
    if hold and hold["points"]:
        share = hold["share_inside_prediction"]
        extra += f"; held-out RMSE {hold['rmse']:.4f} over {len(hold['points'])} point(s)" + (
            f", {share:.2f} of the held-out frontier inside the 95% prediction band" if share is not None else ""
        )
    return extra


@args_dataclass
class CompareArgs(Common):
    grid: str = arg(help="grid directory (its results.csv) or a results table", positional=True)
    a: str = arg(help="baseline recipe (the table's recipe column)")
    b: str = arg(help="candidate recipe")
    metric: str = arg(help="metric column (an accuracy unless --error)")
    error: bool = arg(False, "the metric is already an error (lower is better)")
    target_compute: str | None = arg(
        None,
        "compute (x units) to compare at, e.g. 1e12, or a multiple of the largest measured, e.g. 10x "
        "(or a point: --target-model and --target-samples)",
    )
    target_model: str | None = arg(
        None, "compare at this model (its name in the table, or GFLOPs per sample) trained for --target-samples"
    )
    target_samples: float | None = arg(None, "samples seen at the target point")
    target_subset_size: float | None = arg(
        None, "subset size at the target point (default: the largest in the table); with samples seen, its epochs"
    )
    estimator: str = arg(
        "joint",
        "joint: one law for both recipes over every run and checkpoint, a mixed model (default); "
        "replicates: a law per replicate and a Welch t over them (the earlier estimator)",
        choices=("joint", "replicates"),
    )
    rows: str = arg(
        "auto",
        "the table's rows are checkpoints of few runs (constant-LR grids) or independent runs (cosine "
        "schedules, most published tables); auto decides from the columns and says which",
        choices=("auto", "checkpoints", "runs"),
    )
    x: str = arg("gflops_total", "compute column (default gflops_total)")
    group: str = arg("recipe", "column naming the recipe (default recipe)")
    where: list[str] = arg(help="keep only rows with COLUMN=VALUE (repeatable), e.g. family=clip", factory=list)
    confidence: float = arg(0.95, "level of the intervals and the three-way verdict (default 0.95)")
    fit_below: float | None = arg(
        None,
        "fit only points at or below this compute; the points above are scored against the prediction bands (held out)",
    )
    fit_above: float | None = arg(
        None,
        "the joint law: fit only points at or above this compute (leave out runs before the power-law "
        "regime, such as near-chance accuracies of a published table's smallest runs)",
    )
    backtest: float | None = arg(
        None,
        "also fit at or below X and score the verdict at the largest compute "
        "measured above X against what was measured there",
        metavar="X",
    )
    options: FitFlags = include(FitFlags)
    seed: int = arg(0)
    out: str = arg(help="report directory")


def run_compare(args: CompareArgs) -> None:
    """Two recipes compared by their scaling laws; prints the verdicts, writes the HTML/PNG/JSON report."""
    from thresher.experiments.compare import FitOptions
    from thresher.experiments.compare_report import run

    o = args.options
    results = os.path.join(args.grid, "results.csv") if os.path.isdir(args.grid) else args.grid
    opts = FitOptions(
        frontier=o.frontier,
        loss=o.loss,
        forms=tuple(o.forms.split(",")),
        bins_per_decade=o.bins_per_decade,
        n_bootstrap=o.bootstrap,
        fit_below=args.fit_below,
        estimator=args.estimator,
        rows=args.rows,
        fit_above=args.fit_above,
    )
    point = None
    if args.target_model is not None or args.target_samples is not None:
        point = {"model": args.target_model, "samples": args.target_samples, "subset_size": args.target_subset_size}
    elif args.target_compute is None:
        raise InputError("give --target-compute (e.g. 10x), or a point: --target-model and --target-samples")
    res = run(
        results,
        args.a,
        args.b,
        args.metric,
        args.target_compute,
        args.out,
        x=args.x,
        group=args.group,
        accuracy=not args.error,
        level=args.confidence,
        opts=opts,
        backtest_below=args.backtest,
        seed=args.seed,
        point=point,
        where=args.where,
    )
    print(f"rows: {res['rows']['rows']} ({res['rows']['rows_why']}); estimator: {res['estimator']}")
    print(res["verdict"])
    if res.get("measured"):
        m = res["measured"]
        print(m["verdict"])
        if res["estimator"] == "replicates" and m["sd_a"] is not None and m["sd_b"] is not None:
            print(
                f"  run-to-run spread at {m['x']:.4g}: SD {m['sd_a']:.4f} ({res['a']}), {m['sd_b']:.4f} ({res['b']}) "
                f"over {m['n_a']} and {m['n_b']} independent runs"
            )
    for flag in res["flags"]:
        print(f"  note: {flag}")
    if res.get("resolve"):
        print(f"  {res['resolve']}")
    for k, h in (res.get("held_out") or {}).items():
        print(
            f"  held out above {h['above']:.4g} ({res[k]}): {len(h['points'])} frontier point(s), "
            f"{h['share_inside_prediction'] if h['share_inside_prediction'] is not None else float('nan'):.2f} "
            f"inside the {args.confidence:.0%} prediction band"
        )
    if res.get("backtest"):
        bt = res["backtest"]
        print(f"  backtest (fit at or below {bt['fit_below']:.4g}, scored at {bt['x']:.4g}): {bt['outcome']}")
    print(f"wrote {args.out}/compare.html, compare.png, compare_diff.png, compare.json")


# ---------------------------------------------------------------------------------------------------
# train, eval, train-probe, embed-images: models


@args_dataclass
class TrainArgs(Common):
    data: str = arg(help="WebDataset shards (jpg + txt): a directory, a glob or a brace pattern", positional=True)
    out: str = arg(help="directory for open_clip_train's run and train_manifest.json")
    name: str = arg("run", "run name (open_clip_train's --name)")
    scale: str | None = arg(
        None,
        "a fixed recipe from configs/scales/ (NAME or SET/NAME, e.g. tiny/w64-8k, small) "
        "or a YAML file; the TrainConfig fields below are then ignored",
    )
    overrides: dict = config_group("thresher.experiments.train.TrainConfig")


def run_train(args: TrainArgs) -> None:
    """open_clip_train on WebDataset shards: one fixed scale (--scale) or a TrainConfig."""
    from thresher.experiments.train import TrainConfig, train

    if args.scale:
        return _train_scale(args)
    cfg = load(TrainConfig, None, args.overrides)
    manifest = train(args.data, args.out, cfg, name=args.name)
    print(
        f"trained {cfg.model}: {manifest['checkpoint']} (sha256 {manifest['checkpoint_sha256'][:12]}...); "
        f"record in {args.out}/train_manifest.json"
    )


def _train_scale(args: TrainArgs) -> None:
    from thresher.experiments.train import load_scales, train_scale

    scales, seed = load_scales(args.scale), args.overrides.get("seed")
    if len({s.name for s in scales}) == 1 and len(scales) > 1:  # one scale's replicates: the --seed one
        pick = [s for s in scales if s.seed == (seed if seed is not None else scales[0].seed)]
        if not pick:
            raise InputError(
                f"--scale {args.scale} has seeds {[s.seed for s in scales]}; --seed {seed} is not one of them"
            )
        scales = pick
    if len(scales) != 1:
        raise InputError(
            f"--scale {args.scale} names {len(scales)} scales; pick one as "
            f"{args.scale}/NAME (names: {', '.join(s.name for s in scales)})"
        )
    m = train_scale(args.data, scales[0], args.out, name=args.name)
    print(
        f"trained scale {scales[0].name}: {m['samples_seen']} samples seen, {m['gflops_per_sample']:.4g} "
        f"GFLOPs/sample ({m['gflops_total']:.4g} total), {len(m['checkpoints'])} checkpoint(s); "
        f"record in {args.out}/train_manifest.json"
    )


def plan_train(args: TrainArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    from thresher.experiments.train import TrainConfig

    # costed from the TrainConfig (a --scale run is costed the same way; grid costs scales properly)
    cfg = load(TrainConfig, None, args.overrides)
    key = f"train.cpu_{cfg.model}" if f"train.cpu_{cfg.model}" in t else "train.cpu_thresher-tiny"
    return Estimate(
        what=f"{cfg.model}, {cfg.epochs} epochs of {sizes.trusted:,} pairs",
        inputs=[key],
        cpu_s=sizes.trusted * cfg.epochs / rate(t, key) * 2,
    )  # the figure is per 2-core run


@args_dataclass
class EvalArgs(Common):
    run: str = arg(help="a run directory written by `thresher train`", positional=True)
    eval_set: list[str] = arg(help="an evaluation set in CLIP_benchmark's WebDataset layout (repeatable)")
    device: str | None = arg(None, "cpu or cuda (default: cuda when available)")


def run_eval(args: EvalArgs) -> None:
    """Zero-shot classification and retrieval of each of a run's checkpoints, into RUN/eval.json."""
    from thresher.experiments.evaluate import evaluate_run

    res = evaluate_run(args.run, args.eval_set, device=args.device)
    for ck in res["checkpoints"]:
        flat = ", ".join(
            f"{s}/{k} {v:.3f}"
            for s, ms in ck["metrics"].items()
            for k, v in ms.items()
            if k in ("acc1", "image_retrieval_recall@1", "text_retrieval_recall@1")
        )
        print(f"epoch {ck['epoch']} ({ck['samples_seen']} samples seen): {flat}")
    print(f"wrote {args.run}/eval.json")


@args_dataclass
class TrainProbeArgs(Common):
    pool: str = arg(positional=True)
    scorer: str = arg(help="the scorer whose image embeddings the probe reads")
    labels: str = arg(help="Parquet with uid and label (1 = drop)")
    out: str = arg(help=".npz to write (and a .json record beside it)")
    c: float = arg(1.0, "inverse regularisation strength")


def run_train_probe(args: TrainProbeArgs) -> None:
    """A logistic-regression probe on a scorer's image embeddings, with its held-out AUC."""
    from thresher.stages.features.probe import train_probe

    record = train_probe(args.pool, args.scorer, args.labels, args.out, c=args.c)
    print(
        f"probe on {record['samples']} labelled embeddings ({record['positives']} positive), held-out AUC "
        f"{record['holdout_auc']} -> {args.out} (record {args.out}.json)"
    )


@args_dataclass
class EmbedImagesArgs(Common):
    images: str = arg(
        help="directory with .tar files (searched recursively), e.g. a CLIP_benchmark set", positional=True
    )
    model: str = arg(help="open_clip model: the pool scorer's")
    pretrained: str | None = arg(None, "tag or checkpoint: the pool scorer's (none: random init)")
    out: str = arg(help=".npy file to write (float16, L2-normalised)")
    batch_size: int = arg(256)


def run_embed_images(args: EmbedImagesArgs) -> None:
    """A directory of image tars embedded into one .npy (a target set for image-based filtering)."""
    from thresher.stages.features.features import embed_images

    emb = embed_images(args.images, args.model, args.pretrained, args.out, batch_size=args.batch_size)
    print(f"embedded {len(emb)} images ({emb.shape[1]}-d, {args.model}) -> {args.out}")


def plan_embed_images(args: EmbedImagesArgs, sizes: Sizes, t: dict, cluster: Cluster) -> Estimate:
    n, model = float(sizes.target_images), args.model
    gpu = cluster.gpus and f"features.gpu_{model}" in t
    key = f"features.gpu_{model}" if gpu else "features.cpu_thresher-tiny"
    scale = 1.0 if gpu else gflops(model) / gflops("thresher-tiny")
    e = Estimate(
        what=f"{n:,.0f} target images, {model}", inputs=[_with_ratio(key, scale)], disk_bytes=n * 2 * embed_dim(model)
    )
    if gpu:
        e.gpu_s = n / rate(t, key)
    else:
        e.cpu_s = n * scale / rate(t, key)
    return e


# ---------------------------------------------------------------------------------------------------
# The registry, in the order `thresher --help` lists the commands

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "synth",
            "Generate a synthetic web-pair pool with planted faults and its ground truth.",
            "thresher synth --out pool-src --samples 10000 --seed 0 --port 8765",
            SynthArgs,
            run_synth,
            plan_synth,
        ),
        Command(
            "serve",
            "Serve a synthetic pool over HTTP on 127.0.0.1, with its planted behaviours.",
            "thresher serve pool-src --port 8765",
            ServeArgs,
            run_serve,
        ),
        Command(
            "features",
            "Compute base features and CLIP embeddings/scores for a downloaded pool (resumable).",
            "thresher features pool --model ViT-B-32 --pretrained openai --scorer-id clip_b32 "
            "--model ViT-L-14 --pretrained openai --scorer-id clip_l14",
            FeaturesArgs,
            run_features,
            plan_features,
        ),
        Command(
            "dedup",
            "Find exact, perceptual and semantic duplicates and evaluation-set contamination.",
            "thresher dedup pool --scorer clip_b32 --eval-sets eval/shapes_kind,eval/shapes_color",
            DedupArgs,
            run_dedup,
            plan_dedup,
        ),
        Command(
            "filter",
            "Apply filtering recipes; write per-sample decisions and the funnel.",
            "thresher filter pool --recipe datacomp-basic --recipe relaion-safety --var blocklists=src/blocklists",
            FilterArgs,
            run_filter,
            plan_filter,
        ),
        Command(
            "subset",
            "Select exactly N samples per recipe and reshard them, with a manifest and lineage "
            "(or, with --uids-only, write the selection as DataComp's uid file).",
            "thresher subset pool --recipe datacomp-basic --recipe dfn --size 100000 --out subsets --seed 0",
            SubsetArgs,
            run_subset,
            plan_subset,
        ),
        Command(
            "audit",
            "Provenance: verify, trace, explain, report, remove (takedowns) and recheck subsets.",
            "thresher audit verify subsets/dfn",
            AuditArgs,
            None,
            actions=AUDIT_ACTIONS,
        ),
        Command(
            "grid",
            "Train every (subset, scale) pair as a Ray task, evaluate it, and collect results.csv (resumable).",
            "thresher grid --subset subsets/datacomp-none --subset subsets/dfn --scale tiny "
            "--eval-set src/eval/shapes_kind --out grid",
            GridArgs,
            run_grid,
            plan_grid,
        ),
        Command(
            "fit",
            "Fit scaling laws (Pareto frontier, power law with saturation, bootstrap CIs) to a results table.",
            "thresher fit grid/results.csv --x gflops_total --y shapes_kind/acc1 --accuracy --group recipe "
            "--predict 1e12 --out fits",
            FitArgs,
            run_fit,
            plan_fits,
        ),
        Command(
            "compare",
            "A/B-compare two recipes by their scaling laws; HTML, PNG and JSON report.",
            "thresher compare grid --a datacomp-none --b dfn --metric shapes_kind/acc1 --target-compute 1e12 --out ab",
            CompareArgs,
            run_compare,
            plan_fits,
        ),
        Command(
            "train",
            "Train an open_clip model with open_clip_train (e.g. a data-filtering network on a trusted set).",
            "thresher train src/trusted --out runs/dfn --model thresher-tiny --epochs 5",
            TrainArgs,
            run_train,
            plan_train,
        ),
        Command(
            "eval",
            "Zero-shot classification and retrieval of a run's checkpoints (CLIP_benchmark's metrics).",
            "thresher eval runs/dfn-small --eval-set src/eval/shapes_kind --eval-set src/eval/shapes_retrieval",
            EvalArgs,
            run_eval,
        ),
        Command(
            "train-probe",
            "Train a logistic-regression probe (e.g. NSFW) on a pool scorer's image embeddings.",
            "thresher train-probe pool --scorer clip_l14 --labels nsfw-labels.parquet --out nsfw.npz",
            TrainProbeArgs,
            run_train_probe,
        ),
        Command(
            "embed-images",
            "Embed a directory of WebDataset image tars (a target set for image-based filtering).",
            "thresher embed-images imagenet-train-tars/ --model ViT-L-14 --pretrained openai --out in1k-l14.npy",
            EmbedImagesArgs,
            run_embed_images,
            plan_embed_images,
        ),
        Command(
            "filters",
            "List the registered filters (built-in and from plugins).",
            "thresher filters",
            FiltersArgs,
            run_filters,
        ),
        Command(
            "presets",
            "List the bundled presets (download, synth, dedup, recipes, scales, models, classes, cluster, jobs).",
            "thresher presets recipes",
            PresetsArgs,
            run_presets,
        ),
        Command(
            "export-metadata",
            "Write a pool's metadata with DataComp's column names (for DataComp's tools).",
            "thresher export-metadata pool --out pool-metadata.parquet",
            ExportMetadataArgs,
            run_export_metadata,
        ),
        Command(
            "import-metadata",
            "Make a pool without images from DataComp-format metadata (scores and .npz embeddings as scorers).",
            "thresher import-metadata metadata/ --out pool --npz-dir metadata/",
            ImportMetadataArgs,
            run_import_metadata,
            plan_import,
        ),
        Command(
            "import-pool",
            "Adopt the shards img2dataset wrote as a pool, without copying or re-downloading images.",
            "thresher import-pool img2dataset-out/ --out pool",
            ImportPoolArgs,
            run_import_pool,
        ),
        Command(
            "download",
            "Download a URL list into WebDataset shards with Parquet metadata (resumable).",
            "thresher download pool-src/urls.parquet --out pool --allow-private-addresses",
            DownloadArgs,
            run_download,
            plan_download,
        ),
    )
}
