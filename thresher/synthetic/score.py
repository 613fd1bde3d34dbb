"""Scoring a dedup run against a synthetic pool's answer key (DIR/ground_truth.parquet): score_dedup,
which `thresher demo` prints and tests/test_dedup.py checks.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------
# Scoring a dedup run against the ground truth


def score_dedup(decisions: list[dict], ground_truth: list[dict]) -> dict:
    """Precision and recall of dedup decisions (rows of POOL/dedup) against what was planted.

    exact: each byte-identical group keeps one. near: a planted near-copy counts as found when it ends in
    its source's group; a near-duplicate drop is false when its group's kept sample is not a copy of the
    same original. contamination: planted near-copies of evaluation images dropped as such."""
    rows = {r["uid"]: r for r in decisions}
    truth = {g["uid"]: g for g in ground_truth}

    def root(uid: str) -> str:  # the original a sample is a copy of (itself if none)
        g = truth.get(uid)
        if g and g["category"] == "eval_contamination":
            return "eval:" + g["source_uid"]
        return g["source_uid"] if g and g["category"] in ("near_duplicate", "exact_duplicate") else uid

    def ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    by_sha: dict[str, list[str]] = {}
    for g in ground_truth:
        if g["uid"] in rows and g["sha256"]:
            by_sha.setdefault(g["sha256"], []).append(g["uid"])
    copies = sum(len(u) - 1 for u in by_sha.values())
    exact = [u for u, r in rows.items() if r["reason"] == "exact"]
    exact_true = [u for u in exact if truth[u]["sha256"] == truth[rows[u]["duplicate_group"]]["sha256"]]

    near = [
        g["uid"]
        for g in ground_truth
        if g["category"] == "near_duplicate" and g["uid"] in rows and g["source_uid"] in rows
    ]
    near_found = [
        u
        for u in near
        if rows[u]["duplicate_group"] is not None
        and not rows[u]["duplicate_group"].startswith("eval:")
        and root(rows[u]["duplicate_group"]) == root(u)
    ]
    near_drops = [u for u, r in rows.items() if r["reason"] in ("perceptual", "semantic")]
    near_false = [u for u in near_drops if root(rows[u]["duplicate_group"]) != root(u)]

    planted = {g["uid"] for g in ground_truth if g["category"] == "eval_contamination" and g["uid"] in rows}
    contaminated = {u for u, r in rows.items() if r["reason"] == "contamination"}
    return {
        "exact": {
            "copies": copies,
            "dropped": len(exact),
            "correct": len(exact_true),
            "recall": ratio(len(exact_true), copies),
            "precision": ratio(len(exact_true), len(exact)),
        },
        "near": {
            "planted": len(near),
            "found": len(near_found),
            "dropped": len(near_drops),
            "false": len(near_false),
            "recall": ratio(len(near_found), len(near)),
            "precision": ratio(len(near_drops) - len(near_false), len(near_drops)),
        },
        "contamination": {
            "planted": len(planted),
            "dropped": len(contaminated),
            "found": len(planted & contaminated),
            "recall": ratio(len(planted & contaminated), len(planted)),
            "precision": ratio(len(planted & contaminated), len(contaminated)),
        },
    }
