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

A package, one module per domain, so that each file has one job and the registry's order stays in one
place (`COMMANDS`, below):

- `registry`: the machinery (`Arg`, `Command`, `Call`, `arg`/`include`/`config_group`, `arguments`,
  `make`, `bind`) and `Common`, every command's argument;
- `pool`: synth, serve, download, features, dedup, export-metadata, import-metadata, import-pool;
- `selection`: filter, filters, presets, subset;
- `audit`: audit's actions (verify, trace, explain, report, remove, recheck);
- `browse`: the local web app over a pool (thresher/app/browse/);
- `experiments`: grid, fit, compare, train, eval, train-probe, embed-images.

Each command's `plan` is its stage's cost model, in a `cost.py` beside the stage (thresher/synthetic,
thresher/stages/{acquire,features,dedup,filter,subset}, thresher/audit, thresher/experiments), written
in thresher/core/cost.py's terms; synth's and dedup's go through `pool`, which resolves the config they
read. Everything importers use is re-exported here: `from thresher.app.commands import X` and
`commands.X` name the same things as when the registry was one module.
"""

from __future__ import annotations

from thresher.app.commands.audit import (
    AUDIT_ACTIONS,
    AuditArgs,
    ExplainArgs,
    RecheckArgs,
    RemoveArgs,
    ReportArgs,
    TraceArgs,
    VerifyArgs,
)
from thresher.app.commands.browse import BrowseArgs, run_browse
from thresher.app.commands.experiments import (
    CompareArgs,
    EmbedImagesArgs,
    EvalArgs,
    FitArgs,
    FitFlags,
    GridArgs,
    TrainArgs,
    TrainProbeArgs,
    run_compare,
    run_embed_images,
    run_eval,
    run_fit,
    run_grid,
    run_train,
    run_train_probe,
)
from thresher.app.commands.pool import (
    DedupArgs,
    DownloadArgs,
    ExportMetadataArgs,
    FeaturesArgs,
    ImportMetadataArgs,
    ImportPoolArgs,
    ScorerSettings,
    ServeArgs,
    SynthArgs,
    plan_dedup,
    plan_synth,
    run_dedup,
    run_download,
    run_export_metadata,
    run_features,
    run_import_metadata,
    run_import_pool,
    run_serve,
    run_synth,
)
from thresher.app.commands.registry import (
    ACTION,
    CSV,
    FLAG,
    MAPPING,
    POSITIONAL,
    REPEAT,
    TOGGLE,
    VALUE,
    Arg,
    Call,
    Command,
    Common,
    Spec,
    _config_path,
    _print_json,
    arg,
    args_dataclass,
    arguments,
    bind,
    comma_list,
    config_group,
    include,
    make,
    mapping,
)
from thresher.app.commands.selection import (
    PRESET_KINDS,
    FilterArgs,
    FiltersArgs,
    PresetsArgs,
    SubsetArgs,
    run_filter,
    run_filters,
    run_presets,
    run_subset,
)
from thresher.core.config import CONFIG_DIR, parse_vars
from thresher.experiments.cost import plan_fits, plan_grid, plan_train
from thresher.stages.acquire.cost import plan_download, plan_import
from thresher.stages.features.cost import plan_embed_images, plan_features
from thresher.stages.filter.cost import plan_filter
from thresher.stages.subset.cost import plan_subset

__all__ = [
    # the machinery (registry.py) and what the commands share
    "ACTION",
    "CONFIG_DIR",
    "CSV",
    "FLAG",
    "MAPPING",
    "POSITIONAL",
    "REPEAT",
    "TOGGLE",
    "VALUE",
    "Arg",
    "Call",
    "Command",
    "Common",
    "Spec",
    "_config_path",
    "_print_json",
    "arg",
    "args_dataclass",
    "arguments",
    "bind",
    "comma_list",
    "config_group",
    "include",
    "make",
    "mapping",
    "parse_vars",
    # the commands' argument dataclasses
    "AuditArgs",
    "BrowseArgs",
    "CompareArgs",
    "DedupArgs",
    "DownloadArgs",
    "EmbedImagesArgs",
    "EvalArgs",
    "ExplainArgs",
    "ExportMetadataArgs",
    "FeaturesArgs",
    "FilterArgs",
    "FiltersArgs",
    "FitArgs",
    "FitFlags",
    "GridArgs",
    "ImportMetadataArgs",
    "ImportPoolArgs",
    "PresetsArgs",
    "RecheckArgs",
    "RemoveArgs",
    "ReportArgs",
    "ScorerSettings",
    "ServeArgs",
    "SubsetArgs",
    "SynthArgs",
    "TraceArgs",
    "TrainArgs",
    "TrainProbeArgs",
    "VerifyArgs",
    # the registry
    "AUDIT_ACTIONS",
    "COMMANDS",
    "PRESET_KINDS",
]

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
            "browse",
            "Look at a pool in a browser: samples, filters per recipe and step, thresholds, duplicates, search.",
            "thresher browse thresher-demo/pool --subset thresher-demo/subset",
            BrowseArgs,
            run_browse,
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
