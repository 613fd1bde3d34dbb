"""Scaling laws and models: `thresher grid`, `fit` and `compare` (the A/B verdict), `train`, `eval`,
`train-probe` and `embed-images`: each one's `args` and `run` (a call to thresher/experiments/, or to the
features stage for the last two). Their cost models are in thresher/experiments/cost.py and, for
embed-images, thresher/stages/features/cost.py, named in `COMMANDS`.
"""

from __future__ import annotations

import os

from thresher.app.commands.registry import Common, arg, args_dataclass, config_group, include
from thresher.core.config import load
from thresher.core.errors import InputError

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
