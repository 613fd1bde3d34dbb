"""`thresher demo`: every stage that exists, end to end, on a generated pool served over local HTTP.

It grows as stages land. Today: synth -> serve -> download -> features (base, a random-init tiny CLIP,
and a DFN trained on the synthetic trusted set) -> dedup -> filter (every preset) -> equal-sized subsets
of five recipes -> audit verify and report -> the A/B comparison of datacomp-none and dfn-dedup by
scaling laws over a tiny grid (configs/scales/demo.yaml). Re-running it resumes: the pool source is
reused when its config matches, and finished shards are not fetched again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from . import audit, dedup, download, features, grid, probe, report, runtime, scaling, serve, subset, train
from . import filter as filtering
from .config import CONFIG_DIR, load
from .synth import SynthConfig, generate, score_dedup, synth_config_hash


AB_METRIC = "shapes_retrieval/image_retrieval_recall@5"  # tiny models learn retrieval first (see docs)


def run_demo(out: str = "thresher-demo", samples: int = 20000, seed: int = 0, port: int = 8765,
             ray_address: str | None = None, scales: str = "demo", log=print) -> dict:
    out_path = Path(out).resolve()
    src = out_path / "source"
    pool = out_path / "pool"
    synth_cfg = load(SynthConfig, CONFIG_DIR / "synth" / "default.yaml", {"samples": samples, "seed": seed,
                                                                          "port": port})
    if (src / "synth.json").exists() and \
            json.loads((src / "synth.json").read_text())["config_hash"] != synth_config_hash(synth_cfg):
        # the demo owns its directory: another size, seed or port means a new pool from scratch
        log(f"[demo] {out_path} holds a demo made with other settings; starting it over")
        shutil.rmtree(src)
        shutil.rmtree(pool, ignore_errors=True)
        shutil.rmtree(out_path / "dfn-run", ignore_errors=True)
    generate(src, synth_cfg, log=log)
    server = serve.start(src, port)
    try:
        cfg = load(download.DownloadConfig, CONFIG_DIR / "download" / "demo.yaml")
        manifest = download.run(str(src / "urls.parquet"), str(pool), cfg, ray_address=ray_address, log=log)
    finally:
        server.stop()
    features.run_base(str(pool), ray_address=ray_address, log=log)
    # random-init tiny model: no weights can be downloaded here; later stages train their own
    scorer = features.run_scorer(str(pool), features.ScorerConfig(scorer_id="clip_tiny"), ray_address=ray_address,
                                 log=log)
    # DFN: a filtering network trained only on the trusted set, then scoring the pool as scorer "dfn"
    run_dir = out_path / "dfn-run"
    if (run_dir / "train_manifest.json").exists():
        trained = json.loads((run_dir / "train_manifest.json").read_text())
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run: open_clip_train will not reuse it
        trained = train.train(str(src / "trusted"), str(run_dir), train.TrainConfig(epochs=5), name="dfn", log=log)
    features.run_scorer(str(pool), features.ScorerConfig(scorer_id="dfn", model="thresher-tiny",
                                                         pretrained=trained["checkpoint"]),
                        ray_address=ray_address, log=log)
    # the tiny scorer is random-init, so its embeddings say nothing: exact, perceptual and contamination only
    dd = dedup.run(str(pool), dedup.DedupConfig(semantic=False, eval_sets=[str(src / "eval" / "shapes_kind"),
                                                                           str(src / "eval" / "shapes_color")]),
                   log=log)
    # every preset recipe; the demo's one scorer stands in for clip_b32/clip_l14 (random-init: those
    # decisions exercise the machinery, their CLIP-score choices mean nothing)
    # image-based filtering's target set: the labelled evaluation images, embedded by the same model
    target = src / "eval" / "shapes_kind.thresher-tiny.npy"
    if not target.exists():
        features.embed_images(str(src / "eval" / "shapes_kind"), "thresher-tiny", None, str(target))
    # an NSFW-style probe: labels for half the pool from the answer key (the hazard-marked samples), as a
    # user would bring labelled examples; on random-init embeddings it is weak (see docs/filters.md)
    truth = pq.read_table(src / "ground_truth.parquet").to_pylist()
    uids = features.read_scorer(str(pool), "clip_tiny").column("uid").to_pylist()
    unsafe = {g["uid"] for g in truth if g["category"].startswith("blocked_")}
    half = [u for u in uids if int(u[:2], 16) < 128]
    runtime.write_parquet(probe.labels_table(half, [int(u in unsafe) for u in half]), str(out_path / "probe-labels.parquet"))
    probe_record = probe.train_probe(str(pool), "clip_tiny", str(out_path / "probe-labels.parquet"),
                                     str(out_path / "probe.npz"))
    variables = {"scorer": "clip_tiny", "blocklists": str(src / "blocklists"), "target": str(target),
                 "clusters": max(1, samples // 200), "probe_scorer": "clip_tiny", "probe": str(out_path / "probe.npz")}
    recipes = {}
    for path in sorted((CONFIG_DIR / "recipes").glob("*.yaml")):
        if missing := filtering.missing_plugins(str(path)):  # a plugin's preset runs where it is installed
            log(f"[demo] skipping {path.stem}: needs {', '.join(missing)}")
            continue
        recipes[path.stem] = filtering.run(str(pool), path.stem, variables, log=log)
    # equal-sized subsets of four recipes (no filtering, DataComp basic, DFN, Re-LAION safety), each
    # resharded with a manifest and lineage, then verified as a user receiving them would
    chosen = ["datacomp-none", "datacomp-basic", "dfn", "relaion-safety", "dfn-dedup"]
    size = min(2000, min(recipes[r]["kept"] for r in chosen))
    size = size // 100 * 100 or size
    subsets_dir = out_path / "subsets"
    made = subset.run(str(pool), chosen, subset.SubsetConfig(size=size, seed=seed, samples_per_shard=500),
                      str(subsets_dir), variables, ray_address=ray_address, log=log)
    verified = {r: audit.verify(str(subsets_dir / r), ray_address=ray_address) for r in chosen}
    for r, v in verified.items():
        if not v["ok"]:
            raise RuntimeError(f"demo: subset {r} failed verification: {v['problems'][:5]}")
    # the provenance report of one subset, as a user would publish it beside the data
    reports = out_path / "reports"
    reports.mkdir(exist_ok=True)
    report.build_report(str(subsets_dir / "dfn-dedup"), str(reports / "subset-dfn-dedup.html"))
    # A/B via scaling laws: the same fixed tiny recipes on equal subsets without filtering and with
    # duplicates and mismatched captions removed; fit both, compare at 10x the largest measured compute
    ab_grid = out_path / "ab-grid"
    grid.run_grid([str(subsets_dir / "datacomp-none"), str(subsets_dir / "dfn-dedup")], [scales],
                  [str(src / "eval" / n) for n in ("shapes_color", "shapes_retrieval")], str(ab_grid),
                  ray_address=ray_address, log=log)
    import pandas as pd

    target = float(pd.read_csv(ab_grid / "results.csv")["gflops_total"].max()) * 10
    # (a very small demo pool can leave too few frontier points to fit: the report then says so)
    ab = scaling.compare_table(str(ab_grid / "results.csv"), "datacomp-none", "dfn-dedup", AB_METRIC, target,
                               str(reports / "ab"), seed=seed)
    score = score_dedup(dedup.read(str(pool)).to_pylist(), truth)
    counts = manifest["counts"]
    log("")
    log("demo finished")
    log(f"  synthetic source (URL list, ground truth, eval sets): {src}")
    log(f"  pool: {pool}  ({counts['status'].get('success', 0)} of {counts['rows']} samples downloaded; "
        f"failures: {counts['failure']})")
    log(f"  pool manifest: {pool / 'manifest.json'}")
    log(f"  features: {pool / 'features'} (base; clip_tiny, {scorer['weights']['kind']})")
    log(f"  dedup: {pool / 'dedup'} (kept {dd['kept']} of {dd['samples']}; removed {dd['removed']})")
    log(f"  filter decisions: {pool / 'decisions'}; funnels: {pool / 'stats'}")
    for name, m in recipes.items():
        log(f"    {name:40s} kept {m['kept']:6d} of {m['samples']}")
    log(f"  subsets: {subsets_dir}/{{{','.join(chosen)}}}: {size} samples each in "
        f"{len(made[chosen[0]]['shards'])} shards, manifest + lineage; `thresher audit verify` passes on all")
    log(f"  A/B (datacomp-none vs dfn-dedup, {AB_METRIC}, tiny scales): {ab['verdict']}")
    log("")
    log(f"  subset:     {subsets_dir / 'dfn-dedup'}  (and the others beside it)")
    log(f"  audit:      {reports / 'subset-dfn-dedup.html'}")
    log(f"  A/B report: {reports / 'ab' / 'compare.html'}")
    dfn = {r["uid"]: r["keep"] for r in filtering.read(str(pool), "dfn").to_pylist()}
    cats = {g["uid"]: g["category"] for g in truth}
    removed = {c: sum(not dfn[u] for u in dfn if cats[u] == c) / max(1, sum(cats[u] == c for u in dfn))
               for c in ("mismatched_caption", "clean")}
    log(f"  dfn (top {recipes['dfn']['thresholds']['clip_score']['fraction']:.0%} by the trained filter network) "
        f"removes {removed['mismatched_caption']:.1%} of mismatched captions and {removed['clean']:.1%} of clean samples")
    log(f"  probe (NSFW-style, on clip_tiny embeddings): held-out AUC {probe_record['holdout_auc']:.3f}")
    log("  dedup against the planted ground truth: " + "; ".join(
        f"{k} recall {v['recall']:.3f} precision {v['precision']:.3f}" for k, v in score.items()))
    return {"source": str(src), "pool": str(pool), "manifest": manifest, "dedup_score": score,
            "recipes": {k: {"kept": m["kept"], "samples": m["samples"]} for k, m in recipes.items()},
            "subsets": {r: {"dir": str(subsets_dir / r), "size": m["size"], "verified": verified[r]["ok"]}
                        for r, m in made.items()},
            "ab": {k: ab[k] for k in ("better", "p_b_better", "verdict", "error_a", "error_b", "target_compute")},
            "reports": {"audit": str(reports / "subset-dfn-dedup.html"), "ab": str(reports / "ab" / "compare.html")}}
