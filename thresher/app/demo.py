"""`thresher demo`: the three workflows on a generated pool served over local HTTP, as one job.

It runs jobs/demo.yaml - build_subset, audit and ab_test on one synthetic pool (synth -> served download
-> features -> a trained data-filtering network -> dedup -> recipe -> an exact-size subset -> verify,
provenance report and link-rot recheck -> equal subsets of two recipes -> a tiny training grid -> scaling
fits -> the A/B report) - then scores what the pool stages found against the pool's planted ground truth
and prints where the subset, the audit report and the A/B report are. Re-running resumes where it
stopped (the job's step records, then each stage's own per-shard resume).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from thresher.app import commands, jobs
from thresher.stages.dedup import dedup
from thresher.stages.filter import filter as filtering
from thresher.synthetic.score import score_dedup


def demo_vars(samples: int, seed: int, port: int, scales: str) -> dict:
    # a subset of a tenth of the pool: dfn-dedup keeps about a quarter of what downloads
    return {"samples": samples, "seed": seed, "port": port, "scales": scales, "size": max(100, samples // 10)}


def run_demo(
    out: str = "thresher-demo",
    samples: int = 20000,
    seed: int = 0,
    port: int = 8765,
    ray_address: str | None = None,
    scales: str = "demo",
    overrides: dict | None = None,
    log=print,
) -> dict:
    """`overrides`: further job vars (see jobs/demo.yaml and the jobs it includes)."""
    variables = {**demo_vars(samples, seed, port, scales), **(overrides or {})}
    out_path = Path(out).resolve()
    record = out_path / "demo.json"
    if record.exists() and json.loads(record.read_text()) != variables:
        # the demo owns a directory it made (it has demo.json): other settings mean a new pool from scratch
        log(f"[demo] {out_path} holds a demo made with other settings; starting it over")
        shutil.rmtree(out_path)
    out_path.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(variables, indent=1))
    job = jobs.load("demo", variables, out=str(out_path))
    jobs.run(job, ray_address=ray_address, log=log)
    return summarize(job, log=log)


def known_answer(ab: dict, a: str, b: str) -> str:
    """The A/B verdicts scored against the synthetic world's answer: b (dfn-dedup) drops the planted
    mismatched captions, so it is better, and nothing may name a. Right: a verdict names b and none names
    a; undecided: neither names anyone."""
    named = [ab.get("better"), (ab.get("measured") or {}).get("better")]
    if a in named:
        return f"WRONG: {a} named better (the synthetic world's answer is {b})"
    if b in named:
        return f"right: {b} is better in the synthetic world (it drops the planted mismatched captions)"
    return f"undecided: neither verdict finds the difference at this grid's power (the answer is {b})"


def summarize(job: jobs.Job, log=print) -> dict:
    """What the demo made, the pool stages scored against the planted ground truth, and the three paths."""
    out, v = Path(job.out), job.vars
    src, pool, sub, reports = out / "source", out / "pool", out / "subset", out / "reports"
    manifest = json.loads((pool / "manifest.json").read_text())
    dd = json.loads((pool / "dedup" / "manifest.json").read_text())
    truth = pq.read_table(src / "ground_truth.parquet").to_pylist()
    score = score_dedup(dedup.read(str(pool)).to_pylist(), truth)
    ab = json.loads((reports / "ab" / "compare.json").read_text())
    recheck = json.loads((reports / "recheck.json").read_text())
    subset_manifest = json.loads((sub / "manifest.json").read_text())
    kept = {r: filtering.read(str(pool), r) for r in (v["recipe"], v["a"], v["b"])}
    cats = {g["uid"]: g["category"] for g in truth}
    candidate = {r["uid"]: r["keep"] for r in kept[v["b"]].to_pylist()}
    removed = {
        c: sum(not keep for u, keep in candidate.items() if cats[u] == c) / max(1, sum(cats[u] == c for u in candidate))
        for c in ("mismatched_caption", "clean")
    }
    counts = manifest["counts"]
    log("")
    log("demo finished")
    log(f"  synthetic source (URL list, ground truth, eval sets): {src}")
    log(
        f"  pool: {pool}  ({counts['status'].get('success', 0)} of {counts['rows']} samples downloaded; "
        f"failures: {counts['failure']})"
    )
    log(f"  features: {pool / 'features'} (base; clip_tiny, random-init; dfn, trained on the trusted set)")
    log(f"  dedup: {pool / 'dedup'} (kept {dd['kept']} of {dd['samples']}; removed {dd['removed']})")
    for name, table in kept.items():
        log(f"  recipe {name:14s} keeps {sum(table.column('keep').to_pylist()):6d} of {table.num_rows}")
    log(
        f"  {v['b']} removes {removed['mismatched_caption']:.1%} of mismatched captions and "
        f"{removed['clean']:.1%} of clean samples"
    )
    log(
        "  dedup against the planted ground truth: "
        + "; ".join(f"{k} recall {v['recall']:.3f} precision {v['precision']:.3f}" for k, v in score.items())
    )
    log(
        f"  audit: verify passed; recheck of {recheck['checked']} URLs: {recheck['gone_rate']:.1%} gone, "
        f"{recheck['drifted_rate']:.1%} drifted"
    )
    log(f"  A/B ({v['a']} vs {v['b']}, {v['metric']}, {v['scales']} scales): {ab['verdict']}")
    if ab.get("measured"):
        log(f"       and {ab['measured']['verdict']}")
    answer = known_answer(ab, v["a"], v["b"])
    log(f"       against the known answer: {answer}")
    log("")
    log(f"  subset:     {sub}  ({subset_manifest['size']} samples, recipe {v['recipe']})")
    log(f"  audit:      {reports / 'subset.html'}")
    log(f"  A/B report: {reports / 'ab' / 'compare.html'}")
    return {
        "source": str(src),
        "pool": str(pool),
        "manifest": manifest,
        "dedup_score": score,
        "kept": {r: sum(t.column("keep").to_pylist()) for r, t in kept.items()},
        "recheck": recheck,
        "ab": {
            **{
                k: ab.get(k)
                for k in ("better", "p_b_better", "verdict", "error_a", "error_b", "target_compute", "measured")
            },
            "known_answer": answer,
        },
        "paths": {
            "subset": str(sub),
            "audit": str(reports / "subset.html"),
            "ab": str(reports / "ab" / "compare.html"),
        },
    }


# ---------------------------------------------------------------------------------------------------
# `thresher demo`


@commands.args_dataclass
class DemoArgs(commands.Common):
    out: str = commands.arg("thresher-demo", "working directory (default: thresher-demo)")
    samples: int = commands.arg(20000, "pool size (default: 20000)")
    seed: int = commands.arg(0)
    port: int = commands.arg(8765, "local port for the pool's HTTP server")
    scales: str = commands.arg("demo", "scales of the A/B grid (default: configs/scales/demo.yaml)")


def _run_command(args: DemoArgs) -> None:
    run_demo(
        out=args.out,
        samples=args.samples,
        seed=args.seed,
        port=args.port,
        ray_address=args.ray_address,
        scales=args.scales,
    )


COMMAND = commands.Command(
    "demo",
    "Run the three workflows (build a subset, audit it, A/B-test two recipes by scaling laws) on a "
    "generated pool served over local HTTP: jobs/demo.yaml, then a summary scored against the pool's "
    "planted ground truth.",
    "thresher demo --out thresher-demo --samples 20000",
    DemoArgs,
    _run_command,
)
