"""Dedup: pair finders against brute force, keep policies, and exact duplicates on the synthetic pool."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from thresher.algo import hashes
from thresher.core.pool import Pool
from thresher.stages.dedup import dedup, perceptual, semantic, verdicts


def _planted_vectors():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    x = centers[rng.integers(40, size=4000)] + rng.normal(scale=0.5, size=(4000, 32))
    dst, src = rng.choice(4000, 200, replace=False), rng.integers(4000, size=200)
    x[dst] = x[src] + rng.normal(scale=0.02, size=(200, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_semantic_pairs_match_brute_force_on_planted_vectors():
    x = _planted_vectors()
    sims = x @ x.T
    a, b = np.nonzero(np.triu(sims >= 0.97, k=1))
    truth = set(zip(a.tolist(), b.tolist()))
    assert len(truth) >= 150
    found = {tuple(p) for p in dedup.semantic_pairs(x, 0.97, clusters=8, probes=2).tolist()}
    assert found <= truth  # exact cosine within clusters: never a false pair
    assert len(found & truth) / len(truth) >= 0.99


def test_semantic_pairs_spread_over_ray_tasks_give_the_same_pairs(ray_local):
    x = _planted_vectors()
    alone = {tuple(p) for p in dedup.semantic_pairs(x, 0.97, clusters=8, probes=2).tolist()}
    spread = {tuple(p) for p in dedup.semantic_pairs(x, 0.97, clusters=8, probes=2, ray_tasks=3).tolist()}
    assert len(alone) >= 150 and spread == alone


def test_hamming_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(600, 32), dtype=np.uint8)
    for i in range(0, 100, 2):  # plant close pairs: flip 0..40 bits
        flip = np.zeros(256, np.uint8)
        flip[rng.choice(256, i % 41, replace=False)] = 1
        codes[i + 1] = codes[i] ^ np.packbits(flip)
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    a, b = np.nonzero(np.triu(dist <= 31, k=1))
    truth = set(zip(a.tolist(), b.tolist()))
    assert {tuple(p) for p in hashes.hamming_pairs(codes, 31).tolist()} == truth
    queries = codes[:10]
    hits = {tuple(p) for p in hashes.hamming_pairs(codes, 31, queries=queries).tolist()}
    assert hits == {(q, int(j)) for q in range(10) for j in np.flatnonzero(dist[q] <= 31)}


@pytest.mark.parametrize("keep,expected", [("clip_score", [False, True, False]), ("first", [True, False, False])])
def test_keep_policy(keep, expected):
    cfg = dedup.DedupConfig(keep=keep)
    n = 3
    alive = np.arange(n)
    scores = np.array([0.1, 0.3, 0.2])
    order_key = np.arange(n)
    keep_arr = np.ones(n, bool)
    reason, group = [None] * n, [None] * n
    uids = ["a", "b", "c"]
    dropped = verdicts._apply(
        np.array([[0, 1], [1, 2]]),
        alive,
        "exact",
        cfg,
        scores,
        order_key,
        np.random.default_rng(0),
        group,
        reason,
        keep_arr,
        uids,
    )
    assert dropped == 2 and keep_arr.tolist() == expected
    winner = uids[expected.index(True)]
    assert group == [winner] * 3 and reason.count("exact") == 2


def test_random_keep_is_seeded():
    picks = set()
    for seed in range(20):
        cfg = dedup.DedupConfig(keep="random", seed=seed)
        keep = np.ones(5, bool)
        verdicts._apply(
            np.array([[0, 1], [1, 2], [2, 3], [3, 4]]),
            np.arange(5),
            "exact",
            cfg,
            np.zeros(5),
            np.arange(5),
            np.random.default_rng(seed),
            [None] * 5,
            [None] * 5,
            keep,
            list("abcde"),
        )
        picks.add(int(np.flatnonzero(keep)[0]))
    assert len(picks) > 1


@pytest.fixture(scope="session")
def deduped(featured_pool, synth_dir):
    cfg = dedup.DedupConfig(semantic=False, eval_sets=[str(synth_dir / "eval" / "shapes_kind")])
    manifest = dedup.run(str(featured_pool), cfg, log=lambda *_: None)
    return manifest, {r["uid"]: r for r in dedup.read(str(featured_pool)).to_pylist()}


def test_every_success_has_one_decision(deduped, featured_pool):

    _, rows = deduped
    success = [r["uid"] for r in Pool(str(featured_pool)).read_metadata().to_pylist() if r["status"] == "success"]
    assert sorted(rows) == sorted(success)


def test_exact_duplicates_precision_and_recall_are_one(deduped, ground_truth):
    _, rows = deduped
    by_sha = collections.defaultdict(list)
    for g in ground_truth:
        if g["uid"] in rows:
            by_sha[g["sha256"]].append(g["uid"])
    true_groups = [set(u) for u in by_sha.values() if len(u) > 1]
    assert len(true_groups) > 50
    for members in true_groups:  # recall: each group of identical bytes keeps exactly one
        kept = [u for u in members if rows[u]["keep"]]
        assert len(kept) == 1 or all(rows[u]["reason"] != "exact" for u in kept)
        assert len({rows[u]["duplicate_group"] for u in members}) == 1
        assert sum(rows[u]["reason"] == "exact" for u in members) == len(members) - 1
    exact_dropped = [u for u, r in rows.items() if r["reason"] == "exact"]
    sha = {g["uid"]: g["sha256"] for g in ground_truth}
    # precision: everything dropped as an exact copy has the bytes of the sample its group kept
    assert all(sha[u] == sha[rows[u]["duplicate_group"]] for u in exact_dropped)
    assert len(exact_dropped) == sum(len(m) - 1 for m in true_groups)


def test_rerun_rewrites_the_same_decisions(deduped, featured_pool, synth_dir):
    manifest, rows = deduped
    cfg = dedup.DedupConfig(semantic=False, eval_sets=[str(synth_dir / "eval" / "shapes_kind")])
    again = dedup.run(str(featured_pool), cfg, log=lambda *_: None)
    assert again["removed"] == manifest["removed"]
    assert {r["uid"]: r for r in dedup.read(str(featured_pool)).to_pylist()} == rows


def test_scores_against_ground_truth(deduped, ground_truth):
    """Exact copies: precision and recall 1. Planted near-copies (re-encoded, rescaled, colour-adjusted,
    watermarked): recall >= 0.95, precision >= 0.99. Planted contamination: found, nothing else dropped as it."""
    from thresher.synthetic import synth

    _, rows = deduped
    score = synth.score_dedup(list(rows.values()), ground_truth)
    assert score["exact"]["copies"] > 50 and score["exact"]["recall"] == score["exact"]["precision"] == 1.0, score
    near = score["near"]
    assert near["planted"] >= 100 and near["recall"] >= 0.95 and near["precision"] >= 0.99, near
    variants = {g["variant"] for g in ground_truth if g["category"] == "near_duplicate"}
    assert variants == {"reencode", "resize", "recolor", "watermark"}
    cont = score["contamination"]
    assert cont["planted"] >= 5 and cont["recall"] >= 0.95 and cont["precision"] == 1.0, cont


def test_within_cluster_products_in_torch_equal_numpy():
    """The GPU path's products run in torch; on CPU here, they must give numpy's pairs."""
    x = _planted_vectors()
    groups = [np.arange(0, 2000), np.arange(1500, 4000)]
    ours = semantic._within(x, groups, 0.97, 700, torch_device="cpu")
    ref = semantic._within(x, groups, 0.97, 700)
    assert len(ref) >= 50 and sorted(map(tuple, ours.tolist())) == sorted(map(tuple, ref.tolist()))


@pytest.mark.parametrize("keep", ["clip_score", "first"])
def test_partitioned_exact_and_contamination_give_the_same_verdicts(featured_pool, synth_dir, keep, ray_local):
    """The Ray-partitioned path (for pools no process can hold) against the in-process one, on the test pool
    with its planted exact copies and eval-set copies: the same row verdicts, groups and counts."""
    import shutil

    evals = [str(synth_dir / "eval" / "shapes_kind")]
    common = dict(perceptual=False, semantic=False, eval_sets=evals, keep=keep)
    before = dedup.run(str(featured_pool), dedup.DedupConfig(**common), log=lambda *_: None)
    expected = dedup.read(str(featured_pool)).to_pylist()
    try:
        after = dedup.run(str(featured_pool), dedup.DedupConfig(**common, partitions=3), log=lambda *_: None)
        assert dedup.read(str(featured_pool)).to_pylist() == expected
        assert after["removed"] == before["removed"] and after["removed"]["exact"] > 0
        assert after["removed"]["contamination"] > 0 and after["kept"] == before["kept"]
        assert not (featured_pool / "dedup" / "_work").exists()
    finally:  # leave the session pool's dedup as the other tests expect it
        shutil.rmtree(featured_pool / "dedup")
        dedup.run(str(featured_pool), dedup.DedupConfig(semantic=False, eval_sets=evals), log=lambda *_: None)


def test_partitions_refuse_steps_they_cannot_run():
    dedup.DedupConfig(partitions=4, semantic=False).validate()  # PDQ over partitions is built (radius 31)
    with pytest.raises(Exception, match="set pdq_radius <= 31"):  # the byte buckets miss pairs beyond 31
        dedup.DedupConfig(partitions=4, semantic=False, pdq_radius=32).validate()


def test_partitioned_semdedup_finds_the_planted_copies_as_in_one_process(tmp_path, ray_local):
    """SemDeDup over partitions (k-means on a sample, one cluster a sample, a partition per cluster group)
    against the in-process run with one probe, on planted embeddings: 40 clusters of unrelated images
    (cosine ~0.6 within a cluster) and 10% near-copies (cosine ~0.997). Both remove one of every copy pair and nothing else;
    their k-means differ (a sample against every row), so only the verdicts are compared. Hierarchical k-means
    (past kmeans_flat_max = 10: 7 coarse clusters, each split into its share of 40, the fine centroids read
    by the reduce tasks) gives the same verdicts."""
    from test_filter import make_pool

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 64))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, 40, 2000)] + 0.1 * rng.normal(size=(2000, 64))
    copies = rng.choice(2000, 200, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(2000), copies), 200, replace=False)
    x[copies] = x[originals] + 0.01 * rng.normal(size=(200, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [{"score": float(s), "emb": e} for s, e in zip(rng.uniform(0.2, 0.4, 2000), x)]
    pool = make_pool(tmp_path / "pool", [rows[i : i + 250] for i in range(0, 2000, 250)])
    common = dict(
        perceptual=False, semantic=True, contamination=False, scorer="clip_b32", probes=1, clusters=40, threshold=0.95
    )
    removed = {}
    runs = (
        ("one process", {}),
        ("partitioned", {"partitions": 4}),
        ("hierarchical", {"partitions": 4, "kmeans_flat_max": 10}),
    )
    for name, extra in runs:
        manifest = dedup.run(str(pool), dedup.DedupConfig(**common, **extra), log=lambda *_: None)
        table = dedup.read(str(pool)).to_pylist()
        removed[name] = {i for i, r in enumerate(table) if not r["keep"]}
        assert {r["reason"] for r in table if not r["keep"]} == {"semantic"}
        assert manifest["removed"]["semantic"] == len(removed[name])
        # every copy pair lost exactly one member, and the survivor is its higher-scored one
        for c, o in zip(copies, originals):
            assert (c in removed[name]) != (o in removed[name]), (name, c, o)
            loser, winner = (c, o) if c in removed[name] else (o, c)
            assert rows[winner]["score"] >= rows[loser]["score"]
            assert table[c]["duplicate_group"] == table[o]["duplicate_group"] == table[winner]["uid"]
    assert (
        removed["one process"] == removed["partitioned"] == removed["hierarchical"]
        and len(removed["partitioned"]) == 200
    )
    assert not (pool / "dedup" / "_work").exists()


def test_partitioned_semdedup_needs_one_probe():
    with pytest.raises(Exception, match="set probes: 1"):
        dedup.DedupConfig(partitions=4, perceptual=False, probes=2).validate()


def _planted_codes(rng, n=1500):
    """Random 256-bit codes with planted near-copies at 0..31 bits and decoys at 32..40: bits flipped at
    random, or one bit in each of d bytes (so a copy at 31 shares one byte with its source, at every
    position, and a decoy at 32 none), plus three more copies of one code."""
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    i, planted = n // 3, []
    for d in range(41):
        for spread in (False, True):
            for _ in range(4):
                src, bits = int(rng.integers(n // 3)), np.zeros(256, np.uint8)
                if spread and d <= 32:
                    touched = rng.choice(32, d, replace=False)
                    bits[touched * 8 + rng.integers(0, 8, d)] = 1
                else:
                    bits[rng.choice(256, d, replace=False)] = 1
                codes[i] = codes[src] ^ np.packbits(bits)
                planted.append((min(src, i), max(src, i), d))
                i += 1
    codes[i : i + 3] = codes[7]
    planted += [(7, j, 0) for j in range(i, i + 3)]
    return codes, planted


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_partitioned_pdq_pairs_equal_faiss_range_search(partitions):
    """The byte-bucket search over partitions (multi-index hashing) finds exactly the pairs of the in-process
    FAISS range search, each once, and its compact links (one code searched once) give the same groups."""
    codes, planted = _planted_codes(np.random.default_rng(partitions))
    truth = hashes.hamming_pairs(codes, 31)
    found = {tuple(p) for p in truth.tolist()}
    assert {(a, b) for a, b, d in planted if d <= 31} <= found  # every planted copy, at every distance
    assert not {(a, b) for a, b, d in planted if d > 31} & found  # and no decoy
    ids = np.arange(len(codes), dtype=np.int64) + (5 << 32)  # rows are named shard << 32 | row
    parts = perceptual._pdq_route(codes, ids, partitions)
    assert sum(len(p[0]) for p in parts) == 32 * len(codes)
    pairs, a, b = [], [], []
    for code, chunk, ident in parts:
        pairs += [np.stack([x, y], 1) for x, y in perceptual._pdq_links(code, chunk, ident, 31, expand=True)]
        for x, y in perceptual._pdq_links(code, chunk, ident, 31):
            a.append(x)
            b.append(y)
    pairs = np.concatenate(pairs) - (5 << 32)
    assert len(pairs) == len(truth)  # each pair once
    assert np.array_equal(np.unique(pairs, axis=0), truth)
    nodes, root = perceptual._pdq_components(*perceptual._pdq_forest(np.concatenate(a), np.concatenate(b)))
    t_nodes, t_root = perceptual._pdq_components(truth[:, 0], truth[:, 1])
    assert np.array_equal(nodes - (5 << 32), t_nodes) and np.array_equal(root - (5 << 32), t_root)


@pytest.mark.parametrize("keep", ["clip_score", "first"])
def test_partitioned_pdq_gives_the_in_process_verdicts(featured_pool, synth_dir, keep, ray_local):
    """Contamination, exact and PDQ dedup over 1, 3 and 7 partitions against the in-process run on the test
    pool (planted exact copies, near-copies and eval-set copies): the same verdicts, groups and counts."""
    import shutil

    evals = [str(synth_dir / "eval" / "shapes_kind")]
    common = dict(semantic=False, eval_sets=evals, keep=keep)
    quiet = dict(log=lambda *_: None)
    before = dedup.run(str(featured_pool), dedup.DedupConfig(**common), **quiet)
    expected = dedup.read(str(featured_pool)).to_pylist()
    assert before["removed"]["perceptual"] > 50 and before["removed"]["exact"] > 0
    # a survivor of an exact group later dropped as a near-copy keeps its exact group's name
    assert any(r["reason"] == "perceptual" and r["duplicate_group"] == r["uid"] for r in expected)
    try:
        for partitions in (1, 3, 7):
            after = dedup.run(str(featured_pool), dedup.DedupConfig(**common, partitions=partitions), **quiet)
            assert dedup.read(str(featured_pool)).to_pylist() == expected, partitions
            assert after["removed"] == before["removed"] and after["kept"] == before["kept"]
            assert not (featured_pool / "dedup" / "_work").exists()
    finally:  # leave the session pool's dedup as the other tests expect it
        shutil.rmtree(featured_pool / "dedup")
        dedup.run(str(featured_pool), dedup.DedupConfig(semantic=False, eval_sets=evals), **quiet)


def test_docs_no_longer_say_partitioned_pdq_is_not_built():
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in ("dedup.md", "scaling.md"):
        text = " ".join((docs / name).read_text().split())
        for sentence in re.split(r"(?<=[.;:])\s", text):
            if re.search(r"PDQ|[Pp]erceptual", sentence) and "not built" in sentence:
                # what is still not built: PDQ inside the semantic clusters (and PDQ is not for crops)
                assert "inside the" in sentence or "crop" in sentence.lower(), (name, sentence)
        assert "--no-perceptual`)" not in text, name  # partitions no longer need perceptual off
    assert "multi-index" in " ".join((docs / "dedup.md").read_text().split())
