"""The `thresher` command line. Each subcommand is a thin layer over one stage module."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from . import __version__
from .config import CONFIG_DIR, load
from .errors import InputError, ThresherError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One option per config field, typed from the dataclass, help from its metadata."""
    group = parser.add_argument_group(f"{cls.__name__} fields (override --config)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        # unwrap Optional[X] (X | None) only: list[str]'s own argument is not its type
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
            typing.Union, types.UnionType) else []
        base = args[0] if args else tp
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if base is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(base) is list:
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar="A,B",
                               type=lambda s: [x for x in s.split(",") if x], help=help_text + "; comma-separated")
        elif typing.get_origin(base) is dict:
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar="K=V,...", type=_parse_mapping,
                               help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, default=None, type=base, help=help_text)


def _parse_mapping(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = float(value)
    return out


def overrides(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def _config_path(value: str | None, kind: str) -> Path | None:
    """A config given by path, or by preset name under configs/<kind>/."""
    if value is None:
        return None
    path = Path(value)
    if path.exists():
        return path
    preset = CONFIG_DIR / kind / f"{value}.yaml"
    if preset.exists():
        return preset
    presets = sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))
    raise InputError(f"no config file {value!r} and no preset of that name in configs/{kind}/ (presets: {presets})")


# ---------------------------------------------------------------------------------------------------


def cmd_synth(args) -> None:
    from .synth import SynthConfig, generate

    cfg = load(SynthConfig, _config_path(args.config, "synth"), overrides(args, SynthConfig))
    generate(args.out, cfg)
    print(f"synthetic pool: {Path(args.out).resolve()}  (URL list: {Path(args.out).resolve() / 'urls.parquet'})")


def cmd_serve(args) -> None:
    from .serve import serve_forever

    serve_forever(args.dir, args.port)


def cmd_download(args) -> None:
    from .download import DownloadConfig, run

    cfg = load(DownloadConfig, _config_path(args.config, "download"), overrides(args, DownloadConfig))
    manifest = run(args.urls, args.out, cfg, ray_address=args.ray_address)
    _print_pool(args.out, manifest)


def _print_pool(pool: str, manifest: dict) -> None:
    counts = manifest["counts"]
    print(f"pool: {pool}")
    print(f"  rows {counts['rows']}, " + ", ".join(f"{k} {v}" for k, v in counts["status"].items()))
    if counts["failure"]:
        print("  failures: " + ", ".join(f"{k} {v}" for k, v in counts["failure"].items()))


def cmd_features(args) -> None:
    from .features import ScorerConfig, import_precomputed, run_base, run_scorer

    models_ = args.model or []
    if len(args.pretrained or []) > len(models_) or len(args.scorer_id or []) > len(models_):
        raise InputError("give one --model per --pretrained and per --scorer-id (they pair up in order)")
    shared = {k: v for k, v in overrides(args, ScorerConfig).items() if k not in ("model", "pretrained", "scorer_id")}
    scorers = []
    for i, model in enumerate(models_):
        pretrained = (args.pretrained or [])[i] if i < len(args.pretrained or []) else None
        scorer_id = (args.scorer_id or [])[i] if i < len(args.scorer_id or []) else \
            "clip_" + model.lower().replace("-", "_").replace("/", "_")
        scorers.append(load(ScorerConfig, None, {**shared, "model": model, "scorer_id": scorer_id,
                                                 "pretrained": None if pretrained in (None, "none") else pretrained}))
    for spec in args.precomputed or []:
        scorer_id, sep, column = spec.partition("=")
        if not sep:
            raise InputError(f"--precomputed takes SCORER_ID=COLUMN, e.g. clip_l14=clip_l14_similarity_score; got {spec!r}")
        import_precomputed(args.pool, scorer_id, column, npz_dir=args.npz_dir, npz_img_key=args.npz_img_key,
                           npz_txt_key=args.npz_txt_key)
    if not args.no_base:
        result = run_base(args.pool, ray_address=args.ray_address)
        print(f"base features: {result['complete']}/{result['shards']} shards in {args.pool}/features/base")
    for cfg in scorers:
        manifest = run_scorer(args.pool, cfg, ray_address=args.ray_address)
        print(f"{cfg.scorer_id}: {manifest['shards']['complete']}/{manifest['shards']['total']} shards, "
              f"weights {manifest['weights']['kind']}, device {manifest['device']} -> {args.pool}/features/{cfg.scorer_id}")


def cmd_dedup(args) -> None:
    from .dedup import DedupConfig, run

    cfg = load(DedupConfig, _config_path(args.config, "dedup"), overrides(args, DedupConfig))
    manifest = run(args.pool, cfg, ray_address=args.ray_address)
    print(f"dedup: kept {manifest['kept']} of {manifest['samples']}; removed {manifest['removed']} "
          f"-> {args.pool}/dedup")


def cmd_export_metadata(args) -> None:
    from .export import export_metadata

    table = export_metadata(args.pool, args.out)
    print(f"wrote {table.num_rows} rows in DataComp's columns to {args.out}")


def _variables(items: list[str] | None) -> dict:
    import yaml

    variables = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--var expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        variables[k] = yaml.safe_load(v) if v else v  # 100 -> int, 0.3 -> float, words stay strings
    return variables


def cmd_filter(args) -> None:
    from .filter import run

    variables = _variables(args.var)
    for recipe in args.recipe:
        manifest = run(args.pool, recipe, variables, ray_address=args.ray_address)
        print(f"filter {manifest['recipe']}: kept {manifest['kept']} of {manifest['samples']} -> "
              f"{args.pool}/decisions/{manifest['recipe']} (funnel in {args.pool}/stats/filter-{manifest['recipe']}.json)")


def cmd_subset(args) -> None:
    from .subset import SubsetConfig, run, target_dir

    cfg = SubsetConfig(size=args.size, seed=args.seed, samples_per_shard=args.samples_per_shard,
                       allow_repeat=args.allow_repeat, draws=args.draws)
    results = run(args.pool, args.recipe, cfg, args.out, _variables(args.var) or None, ray_address=args.ray_address)
    for name, m in results.items():
        where = target_dir(args.out, m["recipe"], len(args.recipe), m["draw"]["index"], args.draws)
        rep = f", repeated ({m['selection']['repeat']})" if m["selection"]["repeat"] else ""
        print(f"subset {name}: {m['size']} samples ({m['selection']['mode']} of {m['selection']['kept_by_recipe']} "
              f"kept{rep}) in {len(m['shards'])} shards -> {where}")


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))


def cmd_audit(args) -> int:
    from . import audit, report

    if args.action == "verify":
        res = audit.verify(args.subset, ray_address=args.ray_address)
        for p in res["problems"]:
            print(p)
        print(f"verify {args.subset}: {'OK' if res['ok'] else 'FAILED'} ({res['shards']} shards, "
              f"{res['samples']} samples, {len(res['problems'])} problem(s))")
        return 0 if res["ok"] else 1
    elif args.action == "trace":
        _print_json(audit.trace(args.subset, args.uid))
    elif args.action == "explain":
        res = audit.explain(args.pool, args.uid, args.recipe)
        _print_json(res)
        for name, r in res.get("recipes", {}).items():
            print(f"{name}: {r['verdict']}")
        if "verdict" in res:
            print(res["verdict"])
    elif args.action == "report":
        res = report.build_report(args.subset, args.out)
        print(f"report: {res['out']} (plots: {', '.join(res['plots'])}; opt-out compliant: "
              f"{res['compliance']['compliant']})")
    elif args.action == "remove":
        if not (args.urls or args.domains):
            raise InputError("give --urls FILE and/or --domains FILE")
        m = audit.remove(args.subset, args.out, args.urls, args.domains, refill=args.refill,
                         ray_address=args.ray_address)
        print(f"new version: {args.out} ({m['size']} samples; removed {m['previous']['removed']}"
              f"{', refilled' if args.refill else ''}; previous {args.subset})")
    elif args.action == "recheck":
        res = audit.recheck(args.subset, args.sample, seed=args.seed, timeout=args.timeout,
                            allow_private_addresses=args.allow_private_addresses)
        if args.out:
            import json
            Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"recheck {args.subset}: {res['checked']} URLs; gone {res['gone_rate']:.1%}, drifted "
              f"{res['drifted_rate']:.1%}, opted out {res['opted_out_rate']:.1%}, refused {res['refused_rate']:.1%}")
    return 0


def cmd_grid(args) -> None:
    from .grid import run_grid

    res = run_grid(args.subset, args.scale, args.eval_set, args.out, cpus_per_run=args.cpus_per_run,
                   ray_address=args.ray_address, replicates=args.replicates)
    print(f"grid: {res['runs']} runs, {res['rows']} data points -> {res['results']}")


def cmd_fit(args) -> None:
    from .scaling import fit_table

    res = fit_table(args.results, args.x, args.y, args.group, args.out, accuracy=args.accuracy,
                    holdout_above=args.holdout_above, predict=args.predict or [], n_bootstrap=args.bootstrap,
                    bins_per_decade=args.bins_per_decade, forms=tuple(args.forms.split(",")), seed=args.seed,
                    frontier=args.frontier, loss=args.loss)
    for name, g in res["groups"].items():
        p = g["params"]
        law = (f"{p['A']:.4g} * C^-{p['alpha']:.4f} + {p['E']:.4f}" if g["form"] == "power"
               else f"{p['A']:.4g} * (C + {p['C0']:.4g})^-{p['alpha']:.4f} + {p['E']:.4f}")
        ci = g["params_ci95"].get("alpha")
        extra = f"; alpha 95% CI {ci[0]:.4f}-{ci[1]:.4f}" if ci else ""
        hold = g.get("holdout")
        if hold and hold["points"]:
            share = hold["share_inside_prediction"]
            extra += (f"; held-out RMSE {hold['rmse']:.4f} over {len(hold['points'])} point(s)" +
                      (f", {share:.2f} of the held-out frontier inside the 95% prediction band" if share is not None
                       else ""))
        print(f"{name}: err = {law} ({len(g['frontier'])} frontier points{extra})")
        for pr in g["predictions"]:
            print(f"  predicted at {pr['x']:.4g}: {pr['y']:.4f} (95% CI {pr['lo']:.4f}-{pr['hi']:.4f})")
    print(f"wrote {args.out}/fits.json and {args.out}/fits.png")


def cmd_compare(args) -> None:
    import os

    from .compare import FitOptions
    from .compare_report import run

    results = os.path.join(args.grid, "results.csv") if os.path.isdir(args.grid) else args.grid
    opts = FitOptions(frontier=args.frontier, loss=args.loss, forms=tuple(args.forms.split(",")),
                      bins_per_decade=args.bins_per_decade, n_bootstrap=args.bootstrap, fit_below=args.fit_below)
    res = run(results, args.a, args.b, args.metric, args.target_compute, args.out, x=args.x, group=args.group,
              accuracy=not args.error, level=args.confidence, opts=opts, backtest_below=args.backtest, seed=args.seed)
    print(res["verdict"])
    if res.get("measured"):
        m = res["measured"]
        print(m["verdict"])
        if m["sd_a"] is not None and m["sd_b"] is not None:
            print(f"  run-to-run spread at {m['x']:.4g}: SD {m['sd_a']:.4f} ({res['a']}), {m['sd_b']:.4f} ({res['b']}) "
                  f"over {m['n_a']} and {m['n_b']} independent runs")
    for flag in res["flags"]:
        print(f"  note: {flag}")
    if res.get("resolve"):
        print(f"  {res['resolve']}")
    for k, h in (res.get("held_out") or {}).items():
        print(f"  held out above {h['above']:.4g} ({res[k]}): {len(h['points'])} frontier point(s), "
              f"{h['share_inside_prediction'] if h['share_inside_prediction'] is not None else float('nan'):.2f} "
              f"inside the {args.confidence:.0%} prediction band")
    if res.get("backtest"):
        bt = res["backtest"]
        print(f"  backtest (fit at or below {bt['fit_below']:.4g}, scored at {bt['x']:.4g}): {bt['outcome']}")
    print(f"wrote {args.out}/compare.html, compare.png, compare_diff.png, compare.json")


def cmd_train(args) -> None:
    from .train import TrainConfig, load_scales, train, train_scale

    if args.scale:
        scales = load_scales(args.scale)
        if len({s.name for s in scales}) == 1 and len(scales) > 1:  # one scale's replicates: the --seed one
            pick = [s for s in scales if s.seed == (args.seed if args.seed is not None else scales[0].seed)]
            if not pick:
                raise InputError(f"--scale {args.scale} has seeds {[s.seed for s in scales]}; --seed {args.seed} "
                                 f"is not one of them")
            scales = pick
        if len(scales) != 1:
            raise InputError(f"--scale {args.scale} names {len(scales)} scales; pick one as "
                             f"{args.scale}/NAME (names: {', '.join(s.name for s in scales)})")
        m = train_scale(args.data, scales[0], args.out, name=args.name)
        print(f"trained scale {scales[0].name}: {m['samples_seen']} samples seen, {m['gflops_per_sample']:.4g} "
              f"GFLOPs/sample ({m['gflops_total']:.4g} total), {len(m['checkpoints'])} checkpoint(s); "
              f"record in {args.out}/train_manifest.json")
        return
    cfg = load(TrainConfig, None, overrides(args, TrainConfig))
    manifest = train(args.data, args.out, cfg, name=args.name)
    print(f"trained {cfg.model}: {manifest['checkpoint']} (sha256 {manifest['checkpoint_sha256'][:12]}...); "
          f"record in {args.out}/train_manifest.json")


def cmd_eval(args) -> None:
    from .evaluate import evaluate_run

    res = evaluate_run(args.run, args.eval_set, device=args.device)
    for ck in res["checkpoints"]:
        flat = ", ".join(f"{s}/{k} {v:.3f}" for s, ms in ck["metrics"].items() for k, v in ms.items()
                         if k in ("acc1", "image_retrieval_recall@1", "text_retrieval_recall@1"))
        print(f"epoch {ck['epoch']} ({ck['samples_seen']} samples seen): {flat}")
    print(f"wrote {args.run}/eval.json")


def cmd_train_probe(args) -> None:
    from .probe import train_probe

    record = train_probe(args.pool, args.scorer, args.labels, args.out, c=args.c)
    print(f"probe on {record['samples']} labelled embeddings ({record['positives']} positive), held-out AUC "
          f"{record['holdout_auc']} -> {args.out} (record {args.out}.json)")


def cmd_embed_images(args) -> None:
    from .features import embed_images

    emb = embed_images(args.images, args.model, args.pretrained, args.out, batch_size=args.batch_size)
    print(f"embedded {len(emb)} images ({emb.shape[1]}-d, {args.model}) -> {args.out}")


def cmd_filters(args) -> None:
    from filters import api

    for name, spec in api.known().items():
        print(f"{name:22s} {spec.doc}")


def cmd_run(args) -> None:
    from . import jobs

    job = jobs.load(args.job, _variables(args.var), out=args.out)
    if args.plan:
        from .plan import plan_job, render

        print(render(plan_job(job, cluster=args.cluster)))
        return
    if args.dry_run:
        for step in job.steps:
            print(jobs.show(step.argv) + (f"   # while serving {step.serve}" if step.serve else ""))
        return
    jobs.run(job, ray_address=args.ray_address)


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(out=args.out, samples=args.samples, seed=args.seed, port=args.port, ray_address=args.ray_address,
             scales=args.scales)


# ---------------------------------------------------------------------------------------------------


def _fit_options(p) -> None:
    """The fitting options `thresher fit` and `thresher compare` share."""
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--bins-per-decade", type=float, default=4.0, help="log-spaced frontier bins (default 4)")
    p.add_argument("--forms", default="power,offset", help="laws to try: power (A C^-a + E), offset (A (C+C0)^-a + E)")
    p.add_argument("--frontier", choices=("bins", "laion"), default="bins",
                   help="bins: --bins-per-decade log10 bins (default); laion: Nezhurina et al.'s rule, "
                        "int(log2(x_max/1500)) geometric bins (x in GFLOPs)")
    p.add_argument("--loss", choices=("log", "mse"), default="log",
                   help="least squares on log-errors (default) or on raw errors (mse, as LAION's published fits)")


def build_parser() -> argparse.ArgumentParser:
    from .dedup import DedupConfig
    from .download import DownloadConfig
    from .synth import SynthConfig
    from .train import TrainConfig

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="thresher", description="Curate image-text pre-training datasets.",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, example):
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=fmt,
                           epilog=f"example:\n  {example}")
        p.add_argument("--ray-address", default=None,
                       help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray instance)")
        return p

    p = add("demo", "Run the three workflows (build a subset, audit it, A/B-test two recipes by scaling laws) on "
                    "a generated pool served over local HTTP: jobs/demo.yaml, then a summary scored against the "
                    "pool's planted ground truth.",
            "thresher demo --out thresher-demo --samples 20000")
    p.add_argument("--out", default="thresher-demo", help="working directory (default: thresher-demo)")
    p.add_argument("--samples", type=int, default=20000, help="pool size (default: 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8765, help="local port for the pool's HTTP server")
    p.add_argument("--scales", default="demo", help="scales of the A/B grid (default: configs/scales/demo.yaml)")
    p.set_defaults(func=cmd_demo)

    p = add("run", "Run a job (jobs/*.yaml: a list of thresher commands) end to end; re-running resumes.",
            "thresher run jobs/build_subset.yaml --plan")
    p.add_argument("job", help="job file, or a job name in jobs/ (build_subset, ab_test, audit, ...)")
    p.add_argument("--plan", action="store_true",
                   help="print the estimated wall time, storage, CPU- and GPU-hours instead of running")
    p.add_argument("--cluster", default=None,
                   help="with --plan: cluster to size for (configs/cluster/NAME.yaml or a Ray cluster YAML; "
                        "default: the job's plan.cluster)")
    p.add_argument("--dry-run", action="store_true", help="print the commands the job would run")
    p.add_argument("--var", action="append", help="key=value overriding the job's vars")
    p.add_argument("--out", default=None, help="job directory (default: the job's `out`)")
    p.set_defaults(func=cmd_run)

    p = add("synth", "Generate a synthetic web-pair pool with planted faults and its ground truth.",
            "thresher synth --out pool-src --samples 10000 --seed 0 --port 8765")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--config", default=None, help="YAML file or preset name in configs/synth/")
    add_config_args(p, SynthConfig)
    p.set_defaults(func=cmd_synth)

    p = add("serve", "Serve a synthetic pool over HTTP on 127.0.0.1, with its planted behaviours.",
            "thresher serve pool-src --port 8765")
    p.add_argument("dir", help="directory written by `thresher synth`")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_serve)

    p = add("features", "Compute base features and CLIP embeddings/scores for a downloaded pool (resumable).",
            "thresher features pool --model ViT-B-32 --pretrained openai --scorer-id clip_b32 "
            "--model ViT-L-14 --pretrained openai --scorer-id clip_l14")
    p.add_argument("pool", help="pool directory written by `thresher download`")
    p.add_argument("--model", action="append", help="open_clip model name (repeatable; one scorer each)")
    p.add_argument("--pretrained", action="append",
                   help="pretrained tag or checkpoint path for the matching --model; 'none' = random init")
    p.add_argument("--scorer-id", action="append", help="output name for the matching --model, e.g. clip_b32")
    p.add_argument("--no-base", action="store_true", help="skip the scorer-independent base features")
    p.add_argument("--precomputed", action="append", metavar="SCORER_ID=COLUMN",
                   help="use a score column the input metadata already had (carried by download "
                        "--extra-columns), e.g. clip_l14=clip_l14_similarity_score; repeatable")
    p.add_argument("--npz-dir", default=None, help="with --precomputed: DataComp metadata dir of X.parquet + X.npz")
    p.add_argument("--npz-img-key", default="l14_img", help="image-embedding array in the .npz (default l14_img)")
    p.add_argument("--npz-txt-key", default="l14_txt", help="text-embedding array in the .npz (default l14_txt)")
    group = p.add_argument_group("settings shared by every scorer")
    for name, tp, help_text in (("batch_size", int, "images per model call (default 256)"),
                                ("device", str, "auto, cpu or cuda (default auto)"),
                                ("precision", str, "auto, fp32, fp16 or bf16 (default auto)"),
                                ("actors", int, "model actors; 0 = one per GPU or one on CPU (default 0)"),
                                ("actor_cpus", float, "CPUs per model actor (default 1)")):
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, help=help_text)
    p.set_defaults(func=cmd_features)

    p = add("dedup", "Find exact, perceptual and semantic duplicates and evaluation-set contamination.",
            "thresher dedup pool --scorer clip_b32 --eval-sets eval/shapes_kind,eval/shapes_color")
    p.add_argument("pool", help="pool with base features (and the scorer's embeddings for the semantic step)")
    p.add_argument("--config", default=None, help="YAML file or preset name in configs/dedup/")
    add_config_args(p, DedupConfig)
    p.set_defaults(func=cmd_dedup)

    p = add("filter", "Apply filtering recipes; write per-sample decisions and the funnel.",
            "thresher filter pool --recipe datacomp-basic --recipe relaion-safety --var blocklists=src/blocklists")
    p.add_argument("pool", help="pool with the features (and dedup results) the recipe reads")
    p.add_argument("--recipe", action="append", required=True,
                   help="preset name in configs/recipes/ or a YAML file; repeat for several")
    p.add_argument("--var", action="append", help="key=value for {key} placeholders in the recipe")
    p.set_defaults(func=cmd_filter)

    p = add("subset", "Select exactly N samples per recipe and reshard them, with a manifest and lineage.",
            "thresher subset pool --recipe datacomp-basic --recipe dfn --size 100000 --out subsets --seed 0")
    p.add_argument("pool", help="pool with the recipes' decisions (the filter runs first where they are missing)")
    p.add_argument("--recipe", action="append", required=True,
                   help="preset name or YAML file; repeat for equal-sized subsets of several recipes")
    p.add_argument("--size", type=int, required=True, help="samples in each subset (exactly)")
    p.add_argument("--out", required=True, help="subset directory (one recipe) or parent of OUT/RECIPE (several)")
    p.add_argument("--seed", type=int, default=0, help="seed of the uniform draw and the shuffle (default 0)")
    p.add_argument("--samples-per-shard", type=int, default=10000, help="samples per output shard (default 10000)")
    p.add_argument("--allow-repeat", action="store_true",
                   help="upsample a recipe that keeps fewer than --size samples instead of failing")
    p.add_argument("--draws", type=int, default=1,
                   help="independent draws per recipe (seeds SEED, SEED+1, ...), each in OUT[/RECIPE]/draw-K: "
                        "replicates for an A/B comparison (default 1)")
    p.add_argument("--var", action="append", help="key=value for the recipes' {key} placeholders")
    p.set_defaults(func=cmd_subset)

    p = add("audit", "Provenance: verify, trace, explain, report, remove (takedowns) and recheck subsets.",
            "thresher audit verify subsets/dfn")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("verify", help="re-hash every shard and sample against the manifest and lineage")
    a.add_argument("subset")
    a = actions.add_parser("trace", help="the whole history of a sample in a subset")
    a.add_argument("subset")
    a.add_argument("uid")
    a = actions.add_parser("explain", help="why a pool sample was dropped: the step, its score and threshold")
    a.add_argument("pool")
    a.add_argument("uid")
    a.add_argument("--recipe", action="append", help="recipe(s) to explain (default: every recipe with decisions)")
    a = actions.add_parser("report", help="an HTML report: funnel, domains, languages, sizes, scores, opt-outs")
    a.add_argument("subset")
    a.add_argument("--out", required=True, help="HTML file to write (outside the subset directory)")
    a = actions.add_parser("remove", help="a new version without the samples of takedown/opt-out requests")
    a.add_argument("subset")
    a.add_argument("--urls", help="file of URLs to remove, one per line")
    a.add_argument("--domains", help="file of domains to remove (with their subdomains), one per line")
    a.add_argument("--out", required=True, help="directory of the new version")
    a.add_argument("--refill", action="store_true", help="top back up to N from the next-ranked candidates")
    a = actions.add_parser("recheck", help="re-download a random sample of URLs: link rot and content drift")
    a.add_argument("subset")
    a.add_argument("--sample", type=int, default=1000, help="URLs to re-download (default 1000)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--timeout", type=float, default=10.0)
    a.add_argument("--allow-private-addresses", action="store_true", help="fetch loopback/private hosts (tests)")
    a.add_argument("--out", help="JSON file for the per-URL results")
    for a in actions.choices.values():
        a.add_argument("--ray-address", default=argparse.SUPPRESS, help="Ray cluster to run on (default: $RAY_ADDRESS or local)")
    p.set_defaults(func=cmd_audit)

    p = add("grid", "Train every (subset, scale) pair as a Ray task, evaluate it, and collect results.csv (resumable).",
            "thresher grid --subset subsets/datacomp-none --subset subsets/dfn --scale tiny "
            "--eval-set src/eval/shapes_kind --out grid")
    p.add_argument("--subset", action="append", required=True, help="a subset directory (repeatable)")
    p.add_argument("--scale", action="append", required=True,
                   help="scale preset, SET/NAME or YAML file (repeatable; a set such as tiny adds all its scales)")
    p.add_argument("--eval-set", action="append", required=True, help="evaluation set directory (repeatable)")
    p.add_argument("--cpus-per-run", type=int, default=None, help="CPUs per run without GPUs (default: all)")
    p.add_argument("--replicates", choices=("crossed", "paired"), default="crossed",
                   help="with several draws of a recipe and seeds: train every draw with every seed (crossed), "
                        "or draw k with the k-th seed only (paired: each replicate its own draw and seed)")
    p.add_argument("--out", required=True, help="grid directory (runs/ and results.csv)")
    p.set_defaults(func=cmd_grid)

    p = add("fit", "Fit scaling laws (Pareto frontier, power law with saturation, bootstrap CIs) to a results table.",
            "thresher fit grid/results.csv --x gflops_total --y shapes_kind/acc1 --accuracy --group recipe "
            "--predict 1e12 --out fits")
    p.add_argument("results", help="CSV or Parquet: ours (thresher grid) or a published table")
    p.add_argument("--x", required=True, help="compute column, e.g. gflops_total")
    p.add_argument("--y", required=True, help="error column (or accuracy with --accuracy)")
    p.add_argument("--group", default=None, help="fit one law per value of this column, e.g. recipe")
    p.add_argument("--accuracy", action="store_true", help="y is an accuracy: fit 1 - y")
    p.add_argument("--holdout-above", "--fit-below", dest="holdout_above", type=float, default=None,
                   help="fit only x <= this; report the rest (held out) against the bands")
    p.add_argument("--predict", type=float, action="append", help="x to predict at (repeatable)")
    _fit_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for fits.json and fits.png")
    p.set_defaults(func=cmd_fit)

    p = add("compare", "A/B-compare two recipes by their scaling laws; HTML, PNG and JSON report.",
            "thresher compare grid --a datacomp-none --b dfn --metric shapes_kind/acc1 --target-compute 1e12 --out ab")
    p.add_argument("grid", help="grid directory (its results.csv) or a results table")
    p.add_argument("--a", required=True, help="baseline recipe (the table's recipe column)")
    p.add_argument("--b", required=True, help="candidate recipe")
    p.add_argument("--metric", required=True, help="metric column (an accuracy unless --error)")
    p.add_argument("--error", action="store_true", help="the metric is already an error (lower is better)")
    p.add_argument("--target-compute", required=True,
                   help="compute (x units) to compare at, e.g. 1e12, or a multiple of the largest measured, e.g. 10x")
    p.add_argument("--x", default="gflops_total", help="compute column (default gflops_total)")
    p.add_argument("--group", default="recipe", help="column naming the recipe (default recipe)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="level of the intervals and the three-way verdict (default 0.95)")
    p.add_argument("--fit-below", type=float, default=None,
                   help="fit only points at or below this compute; the points above are scored against the "
                        "prediction bands (held out)")
    p.add_argument("--backtest", type=float, default=None, metavar="X",
                   help="also fit at or below X and score the verdict at the largest compute measured above X "
                        "against what was measured there")
    _fit_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(func=cmd_compare)

    p = add("train", "Train an open_clip model with open_clip_train (e.g. a data-filtering network on a trusted set).",
            "thresher train src/trusted --out runs/dfn --model thresher-tiny --epochs 5")
    p.add_argument("data", help="WebDataset shards (jpg + txt): a directory, a glob or a brace pattern")
    p.add_argument("--out", required=True, help="directory for open_clip_train's run and train_manifest.json")
    p.add_argument("--name", default="run", help="run name (open_clip_train's --name)")
    p.add_argument("--scale", default=None,
                   help="a fixed recipe from configs/scales/ (NAME or SET/NAME, e.g. tiny/w64-8k, small) or a "
                        "YAML file; the TrainConfig fields below are then ignored")
    add_config_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = add("eval", "Zero-shot classification and retrieval of a run's checkpoints (CLIP_benchmark's metrics).",
            "thresher eval runs/dfn-small --eval-set src/eval/shapes_kind --eval-set src/eval/shapes_retrieval")
    p.add_argument("run", help="a run directory written by `thresher train`")
    p.add_argument("--eval-set", action="append", required=True,
                   help="an evaluation set in CLIP_benchmark's WebDataset layout (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_eval)

    p = add("train-probe", "Train a logistic-regression probe (e.g. NSFW) on a pool scorer's image embeddings.",
            "thresher train-probe pool --scorer clip_l14 --labels nsfw-labels.parquet --out nsfw.npz")
    p.add_argument("pool")
    p.add_argument("--scorer", required=True, help="the scorer whose image embeddings the probe reads")
    p.add_argument("--labels", required=True, help="Parquet with uid and label (1 = drop)")
    p.add_argument("--out", required=True, help=".npz to write (and a .json record beside it)")
    p.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    p.set_defaults(func=cmd_train_probe)

    p = add("embed-images", "Embed a directory of WebDataset image tars (a target set for image-based filtering).",
            "thresher embed-images imagenet-train-tars/ --model ViT-L-14 --pretrained openai --out in1k-l14.npy")
    p.add_argument("images", help="directory with .tar files (searched recursively), e.g. a CLIP_benchmark set")
    p.add_argument("--model", required=True, help="open_clip model: the pool scorer's")
    p.add_argument("--pretrained", default=None, help="tag or checkpoint: the pool scorer's (none: random init)")
    p.add_argument("--out", required=True, help=".npy file to write (float16, L2-normalised)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_embed_images)

    p = add("filters", "List the registered filters (built-in and from plugins).", "thresher filters")
    p.set_defaults(func=cmd_filters)

    p = add("export-metadata", "Write a pool's metadata with DataComp's column names (for DataComp's tools).",
            "thresher export-metadata pool --out pool-metadata.parquet")
    p.add_argument("pool")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.set_defaults(func=cmd_export_metadata)

    p = add("download", "Download a URL list into WebDataset shards with Parquet metadata (resumable).",
            "thresher download pool-src/urls.parquet --out pool --allow-private-addresses")
    p.add_argument("urls", help="URL list: Parquet, CSV or JSONL (local path or s3://, gs://, ...)")
    p.add_argument("--out", required=True, help="pool directory (local path or s3://, gs://, ...)")
    p.add_argument("--config", default=None, help="YAML file or preset name in configs/download/")
    add_config_args(p, DownloadConfig)
    p.set_defaults(func=cmd_download)
    return parser


def _cause(err: BaseException) -> BaseException:
    """The error a Ray task raised, out of its RayTaskError wrapper (an InputError raised inside a task
    is still the user's input error)."""
    seen = 0
    # RayTaskError(InputError) is an InputError too, but its message is the task's whole traceback
    while seen < 8 and (not isinstance(err, ThresherError) or type(err).__name__.startswith("RayTaskError")):
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None or inner is err:
            break
        err, seen = inner, seen + 1
    return err


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted: completed shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as raised:  # noqa: BLE001 - a command ends in one line, never a traceback (issue 15)
        err = _cause(raised)
        if os.environ.get("THRESHER_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, InputError):
            print(f"error: {message}", file=sys.stderr)
            return 2
        if isinstance(err, ThresherError):
            print(f"error: {message}", file=sys.stderr)
            return 1
        print(f"error: {args.command}: unexpected {type(err).__name__}: {message[:500]} (an input Thresher "
              f"does not check yet, or a bug: please report it; THRESHER_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
