"""`thresher compare`'s output: REPORT/compare.json, and compare.html with compare.png and compare_diff.png.

The page leads with the verdict at the target and the verdict from the runs at the largest measured
compute, then the flags (crossings, disagreements, how far the target is extrapolated), what would
resolve an undecided comparison, a table of every run (recipe, scale, draw, seed, metric), and two
plots: the measured points per scale with their spread and the fitted curves, and the difference
B - A against compute with its interval.
"""

from __future__ import annotations

import base64
import html
import math
import os

import numpy as np

from thresher.core.plotting import plain
from thresher.experiments import compare as cmp_mod
from thresher.experiments import difference, replicates
from thresher.experiments.scaling import finite_json


def run(path: str, a: str, b: str, metric: str, target, out: str, *, seed: int = 0, **kw) -> dict:
    """`thresher compare`: read the table, compare (compare.from_table, which takes the other keywords),
    write OUT/compare.json and the report. `target` is a compute figure or a string 'Nx' (N times the
    largest compute measured)."""
    import json

    cmp = cmp_mod.from_table(path, a, b, metric, target, **kw)
    os.makedirs(out, exist_ok=True)
    accuracy = kw.get("accuracy", True)
    write(cmp, out, y_label=("1 - " + metric) if accuracy else metric, x_label=kw.get("x", "gflops_total"), seed=seed)
    with open(os.path.join(out, "compare.json"), "w") as f:  # NaN as null: always valid JSON
        json.dump(finite_json(cmp.result), f, indent=2, default=cmp_mod.json_default, allow_nan=False)
    return cmp.result


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def _png(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def write(cmp: cmp_mod.Comparison, out: str, x_label: str, y_label: str, seed: int = 0) -> None:
    r = cmp.result
    curves = os.path.join(out, "compare.png")
    diff = os.path.join(out, "compare_diff.png")
    plot_curves(cmp, curves, x_label, y_label, seed)
    plot_difference(cmp, diff, x_label)
    e = html.escape
    a, b = r["a"], r["b"]
    d = r["difference"]
    summary = [
        ("A (baseline)", a),
        ("B (candidate)", b),
        ("metric", r.get("metric", "") + (" (error = 1 - value)" if r.get("accuracy") else "")),
        ("confidence", f"{r['confidence']:.0%}"),
        (
            "target compute",
            f"{r['target_compute']:.4g} (x{r['extrapolation_factor']:.3g} the largest measured, "
            f"{r['measured_range'][1]:.4g})",
        ),
        ("predicted error A", _with_ci(r["error_a"], r["ci_a"])),
        ("predicted error B", _with_ci(r["error_b"], r["ci_b"])),
        ("difference B - A at target", _with_ci(d["diff"], [d["lo"], d["hi"]] if d["lo"] is not None else None)),
        (
            f"P(B better at target) (a verdict needs at least {0.5 + r['confidence'] / 2:.3g}, or at most "
            f"{0.5 - r['confidence'] / 2:.3g} for A)",
            _fmt(r["p_b_better"], 2),
        ),
        ("smallest detectable difference (80% power)", _fmt(d["mde"])),
        (
            "independent units",
            f"A: {r['units']['a']['count']} {r['units']['a']['kind']}(s), "
            f"B: {r['units']['b']['count']} {r['units']['b']['kind']}(s)",
        ),
        ("estimator", f"{r['estimator']}: {r['method']}"),
        ("rows", f"{r['rows']['rows']} ({r['rows']['rows_why']})" if r.get("rows") else "-"),
    ]
    jt = r.get("joint") or {}
    if jt.get("target"):
        for name, w in jt["target"].items():
            summary.append(
                (
                    f"target point, {name}",
                    f"model {w['gflops_per_sample']:.4g} GFLOPs/sample, {w['samples_seen']:.4g} samples seen"
                    + (f", subset {w['subset_size']:.6g} ({w['epochs']:.3g} epochs)" if w["subset_size"] else ""),
                )
            )
        summary.append(("most epochs of any measured run", _fmt(jt.get("epochs_measured_max"), 3)))
        summary.append(("asymptotes differ? (likelihood ratio p)", _fmt(jt.get("p_asymptote"), 3)))
        if jt.get("shared_asymptote"):
            summary.append(("reading under one shared asymptote (not the verdict)", jt["shared_asymptote"]["reading"]))
    m = r.get("measured")
    if m:
        summary[8:8] = [
            (
                "measured at",
                f"{m['x']:.4g} ({' / '.join(map(str, m['point'])) if isinstance(m['point'], list) else m['point']})",
            ),
            ("measured error A / B", f"{_fmt(m['mean_a'])} / {_fmt(m['mean_b'])}"),
            ("measured difference B - A", _with_ci(m["diff"], [m["lo"], m["hi"]] if m["lo"] is not None else None)),
            ("run-to-run spread there (SD over units) A / B", f"{_fmt(m['sd_a'])} / {_fmt(m['sd_b'])}"),
            ("P(B better), measured", _fmt(m["p_b_better"], 2)),
        ]
    table = _table(["", ""], [[k, v] for k, v in summary], cls="summary")
    runs = r.get("runs", [])
    run_cols = list(runs[0]) if runs else []
    runs_html = _table(run_cols, [[_fmt(row[c]) for c in run_cols] for row in runs], cls="runs")
    flags = "".join(f"<li>{e(f)}</li>" for f in r["flags"]) or "<li>none</li>"
    extra = ""
    for k, h in (r.get("held_out") or {}).items():
        share = h["share_inside_prediction"]
        extra += (
            f"<h2>Held out above {h['above']:.4g}: recipe {e(r[k])}</h2><p>{e(h['band'])}: "
            f"{_fmt(share, 2) if share is not None else '-'} of {len(h['points'])} held-out frontier points "
            f"inside (curve band: {_fmt(h['share_inside_curve'], 2)})</p>"
        )
    bt = r.get("backtest")
    if bt:
        extra += (
            f"<h2>Backtest: fitted at or below {bt['fit_below']:.4g}, scored at {bt['x']:.4g}</h2>"
            f"<p class='outcome'>outcome: <b>{e(bt['outcome'])}</b></p><ul><li>{e(bt['predicted_verdict'])}</li>"
            f"<li>{e(bt['measured_verdict'])}</li></ul>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>A/B: {e(a)} vs {e(b)}</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}"
        "td,th{border:1px solid #999;padding:3px 6px}table{border-collapse:collapse;margin:1em 0}"
        ".verdict{font-size:1.15em}</style></head><body>"
        f"<h1>{e(a)} (A) vs {e(b)} (B)</h1>"
        f"<p class='verdict' id='verdict'><b>{e(r['verdict'])}</b></p>"
        + (f"<p id='measured-verdict'>{e(m['verdict'])}</p>" if m else "")
        + (f"<p id='resolve'>{e(r['resolve'])}</p>" if r.get("resolve") else "")
        + f"<h2>Flags</h2><ul id='flags'>{flags}</ul>{table}"
        f"<h2>Measured points and fitted curves</h2><p><img alt='curves' src='data:image/png;base64,{_png(curves)}'></p>"
        f"<h2>Difference B - A against compute</h2><p><img alt='difference' src='data:image/png;base64,{_png(diff)}'></p>"
        f"{extra}<h2>Every run (last checkpoint)</h2>{runs_html}</body></html>"
    )
    with open(os.path.join(out, "compare.html"), "w") as f:
        f.write(page)


def _with_ci(v, ci) -> str:
    if v is None:
        return "-"
    return f"{_fmt(v)}" + (f" ({_fmt(ci[0])} to {_fmt(ci[1])})" if ci and ci[0] is not None else "")


def _table(head: list, rows: list[list], cls: str) -> str:
    e = html.escape
    h = "".join(f"<th>{e(str(c))}</th>" for c in head) if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'>" + (f"<tr>{h}</tr>" if h else "") + body + "</table>"


def _axes(figsize=(8, 5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    return plt, fig, ax


def plot_curves(cmp, path: str, x_label: str, y_label: str, seed: int = 0) -> None:
    plt, fig, ax = _axes()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph*"
    top = max(cmp.target, cmp.result["measured_range"][1])
    for k, arm in enumerate((cmp.arm_a, cmp.arm_b)):
        col = colors[k]
        keys = sorted({p for r in arm.reps for p in r.points}, key=str)
        scales = sorted({p[0] if isinstance(p, tuple) else "" for p in keys})
        for p in keys:
            vals = [(r.x[i], r.y[i]) for r in arm.reps for i, q in enumerate(r.points) if q == p]
            xs, ys = np.array(vals).T
            mk = markers[scales.index(p[0] if isinstance(p, tuple) else "") % len(markers)]
            ax.errorbar(
                xs.mean(),
                ys.mean(),
                yerr=ys.std(ddof=1) if len(ys) > 1 else None,
                fmt=mk,
                color=col,
                ms=5,
                capsize=2,
                alpha=0.8,
            )
        lo_x = min(float(r.x.min()) for r in arm.reps)
        grid = np.geomspace(lo_x, top, 200)
        if cmp.joint is not None:  # the joint law: each recipe's best measured model size at each compute
            m, lo, hi = joint_band(cmp, k, np.geomspace(lo_x, top, 60))
            ax.plot(np.geomspace(lo_x, top, 60), m, color=col, lw=2, label=f"{'AB'[k]}: {plain(arm.name)} (joint law)")
            ax.fill_between(np.geomspace(lo_x, top, 60), lo, hi, color=col, alpha=0.15)
            continue
        for r in arm.reps:
            if r.law is not None:
                ax.plot(grid, r.law.predict(grid), color=col, alpha=0.2, lw=0.8)
        mean = replicates.mean_curve(arm, grid)
        if np.isfinite(mean).any():
            b = replicates.bands(arm, grid, cmp.level, cmp.opts, seed)
            ax.plot(
                grid,
                mean,
                color=col,
                lw=2,
                label=f"{'AB'[k]}: {plain(arm.name)} (mean of {len(arm.reps)} replicate fits)",
            )
            ax.fill_between(grid, *b["curve"], color=col, alpha=0.15)
        for s in scales if k == 0 else []:
            ax.plot(
                [],
                [],
                markers[scales.index(s) % len(markers)],
                color="grey",
                label=f"scale {plain(s)}" if s else "points",
            )
    ax.axvline(cmp.target, color="grey", ls=":", label=f"target {cmp.target:.3g}")
    ax.axvline(cmp.result["measured_range"][1], color="grey", ls="--", lw=0.8, label="largest measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(plain(x_label))
    ax.set_ylabel(plain(y_label))
    ax.set_title(
        f"measured points (mean +- SD over replicates) and fits; bands: {cmp.level:.0%} of the mean curve", fontsize=9
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _at(cmp, c: float):
    """A compute on the plots' axis as a joint-law target (on the target's subset size)."""
    from thresher.experiments.joint import Target

    return Target(compute=float(c), U=cmp.point.U if cmp.point is not None else None)


def joint_band(cmp, k: int, grid):
    from thresher.experiments.joint import band

    return band(cmp.joint.fit, k, grid, cmp.level, cmp.point.U if cmp.point is not None else None)


def plot_difference(cmp, path: str, x_label: str) -> None:
    plt, fig, ax = _axes((8, 4))
    lo_x, hi_x = cmp.result["measured_range"]
    grid = np.geomspace(lo_x, max(cmp.target, hi_x), 80)
    if cmp.joint is not None:
        u = (len(cmp.arm_a.units()), len(cmp.arm_b.units()))
        ds = [
            cmp_mod.joint_difference(cmp.joint.fit, _at(cmp, c), cmp.level, u)
            for c in np.geomspace(lo_x, max(cmp.target, hi_x), 30)
        ]
        grid = np.geomspace(lo_x, max(cmp.target, hi_x), 30)
        label = "joint law: B - A"
    else:
        ua, ub = replicates.unit_predictions(cmp.arm_a, grid), replicates.unit_predictions(cmp.arm_b, grid)
        ds = [difference.welch(ua[:, j], ub[:, j], cmp.level) for j in range(len(grid))]
        label = "fitted: mean B - mean A"
    ax.plot(grid, [d.diff for d in ds], color="black", label=label)
    lo, hi = np.array([d.lo for d in ds]), np.array([d.hi for d in ds])
    if np.isfinite(lo).any():
        ax.fill_between(
            grid,
            lo,
            hi,
            color="black",
            alpha=0.12,
            label=f"{cmp.level:.0%} interval ({'joint law' if cmp.joint is not None else 'replicates'})",
        )
    for x, key in replicates.common_points(cmp.arm_a, cmp.arm_b):
        d = difference.welch(
            *(arm.unit_means(replicates.values_at(arm, key)) for arm in (cmp.arm_a, cmp.arm_b)), cmp.level
        )
        err = [[d.diff - d.lo], [d.hi - d.diff]] if math.isfinite(d.lo) else None
        ax.errorbar(x, d.diff, yerr=err, fmt="o", color="tab:red", ms=4, capsize=2)
    ax.errorbar([], [], fmt="o", color="tab:red", label="measured: B - A per point")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(cmp.target, color="grey", ls=":", label="target")
    ax.set_xscale("log")
    ax.set_xlabel(plain(x_label))
    ax.set_ylabel("error B - error A (below 0: B better)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
