"""The pool's commands: `thresher synth` and `serve` (the synthetic web), `download`, `features`, `dedup`,
`export-metadata`, `import-metadata` and `import-pool`: each one's `args`, its `run` (a call to its stage
module and a printed summary) and, for synth and dedup, the `plan` that resolves the config their cost
model reads (thresher/synthetic/cost.py, thresher/stages/dedup/cost.py). The other cost models are the
stages' own (thresher/stages/acquire/cost.py, thresher/stages/features/cost.py), named in `COMMANDS`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thresher.app.commands.registry import Common, _config_path, arg, args_dataclass, config_group, include
from thresher.core.config import load
from thresher.core.cost import Cluster, Estimate, Sizes
from thresher.core.errors import InputError
from thresher.stages.dedup import cost as dedup_cost
from thresher.synthetic import cost as synth_cost

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
    """The synthetic pool's cost model (thresher/synthetic/cost.py) on the config the step resolves to."""
    return synth_cost.plan_synth(_synth_config(args), sizes, t, cluster)


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
    from thresher.stages.acquire import yields

    manifest = run(args.urls, args.out, cfg, ray_address=args.ray_address)
    counts = manifest["counts"]
    print(f"pool: {args.out}")
    print(f"  rows {counts['rows']}, " + ", ".join(f"{k} {v}" for k, v in counts["status"].items()))
    for line in yields.lines(manifest["yield"]):
        print(f"  {line}")
    print(f"  (the yield report: {args.out}/stats/download-yield.json)")


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
    """Dedup's cost model (thresher/stages/dedup/cost.py) on the config the step resolves to."""
    return dedup_cost.plan_dedup(_dedup_config(args), sizes, t, cluster)


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
    from thresher.stages.acquire.adopt import import_pool

    m = import_pool(args.dir, args.out, args.uid_col, ray_address=args.ray_address)
    ok = m["counts"]["status"].get("success", 0)
    print(f"adopted {m['shards']['complete']} shards, {ok} of {m['counts']['rows']} rows downloaded -> {args.out}")
