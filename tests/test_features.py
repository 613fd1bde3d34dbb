"""Feature stage on the downloaded synthetic pool: base features, CLIP scores, resume and bad input."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.algo.hashes import hamming_hex
from thresher.core.errors import StageError
from thresher.core.pool import Pool
from thresher.exec import execute
from thresher.exec.stage import run_stage
from thresher.stages.features import features


def _success(out):
    return [r for r in Pool(str(out)).read_metadata().to_pylist() if r["status"] == "success"]


def test_base_features_cover_every_success_and_match_ground_truth(featured_pool, ground_truth):
    base = {r["uid"]: r for r in features.read_base(str(featured_pool)).to_pylist()}
    success = _success(featured_pool)
    assert set(base) == {r["uid"] for r in success}
    meta = {r["uid"]: r for r in success}
    for g in ground_truth:
        row = base.get(g["uid"])
        if row is None:
            continue
        if g["category"] != "short_caption":  # too short to call a language reliably
            assert (row["caption_lang"] == "en") == (g["lang"] == "en"), (g["category"], row["caption_lang"])
        caption = meta[g["uid"]]["caption"]
        assert (row["caption_chars"], row["caption_words"]) == (len(caption), len(caption.split()))
        assert (row["original_width"], row["original_height"]) == (g["width"], g["height"])
        assert row["aspect_ratio"] == pytest.approx(
            max(g["width"], g["height"]) / min(g["width"], g["height"]), rel=1e-5
        )
        assert row["sha256"] == g["sha256"] and row["error"] is None and len(row["pdq"]) == 64


def test_pdq_of_stored_images_matches_the_blocklist(featured_pool, ground_truth, synth_dir):
    listed = [
        l for l in (synth_dir / "blocklists" / "image_pdq.txt").read_text().splitlines() if l and not l.startswith("#")
    ]
    base = {r["uid"]: r for r in features.read_base(str(featured_pool)).to_pylist()}
    for g in ground_truth:
        if g["category"] == "blocked_pdq":
            assert min(hamming_hex(base[g["uid"]]["pdq"], h) for h in listed) <= 31


def test_clip_features_are_row_aligned_and_normalised(featured_pool):
    table, img, txt = features.read_scorer(str(featured_pool), "clip_tiny", with_embeddings=True)
    assert table.column("uid").to_pylist() == features.read_base(str(featured_pool)).column("uid").to_pylist()
    assert img.dtype == np.float16 and img.shape == (table.num_rows, 64) == txt.shape
    np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1.0, atol=2e-3)
    scores = np.array(table.column("clip_score").to_pylist())
    np.testing.assert_allclose(scores, (img.astype(np.float32) * txt.astype(np.float32)).sum(1), atol=2e-3)
    manifest = json.loads((featured_pool / "features" / "clip_tiny" / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "random-init" and "meaningless" in manifest["weights"]["note"]
    assert manifest["shards"]["complete"] == manifest["shards"]["total"] == 6


def test_local_checkpoint_loads_and_matches_open_clip_preprocessing(featured_pool, tmp_path, ray_local):
    import open_clip
    import torch
    from PIL import Image

    from thresher.core import models

    models.register_project_models()
    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms("thresher-tiny")
    # the way open_clip_train saves: epoch, name, state_dict (with DDP's "module." prefix)
    ckpt = tmp_path / "epoch_1.pt"
    torch.save(
        {"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt
    )
    small = tmp_path / "pool"
    (small / "shards").mkdir(parents=True)
    for f in (featured_pool / "shards").glob("00000000*"):
        shutil.copy(f, small / "shards" / f.name)
    cfg = features.ScorerConfig(scorer_id="ckpt", pretrained=str(ckpt))
    manifest = features.run_scorer(str(small), cfg, log=lambda *_: None)
    assert manifest["weights"]["kind"] == "checkpoint" and len(manifest["weights"]["sha256"]) == 64
    table, img, _ = features.read_scorer(str(small), "ckpt", with_embeddings=True)
    tokenizer = open_clip.get_tokenizer("thresher-tiny")
    with tarfile.open(small / "shards" / "00000000.tar") as tar:
        for i in (0, 7, 100):
            key = table.column("key")[i].as_py()
            image = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read())).convert("RGB")
            caption = tar.extractfile(f"{key}.txt").read().decode()
            with torch.no_grad():
                e_img = torch.nn.functional.normalize(model.eval().encode_image(preprocess(image)[None]), dim=-1)
                e_txt = torch.nn.functional.normalize(model.encode_text(tokenizer([caption])), dim=-1)
            np.testing.assert_allclose(img[i].astype(np.float32), e_img[0].numpy(), atol=3e-3)
            assert table.column("clip_score")[i].as_py() == pytest.approx(float((e_img * e_txt).sum()), abs=3e-3)


def _small_pool(featured_pool, tmp_path, shards=(0, 1)):
    small = tmp_path / "pool"
    (small / "shards").mkdir(parents=True)
    for s in shards:
        for f in (featured_pool / "shards").glob(f"{s:08d}*"):
            shutil.copy(f, small / "shards" / f.name)
    return small


def test_rerun_redoes_only_unfinished_shards(featured_pool, tmp_path, ray_local):
    small = _small_pool(featured_pool, tmp_path)
    cfg = features.ScorerConfig()
    features.run_scorer(str(small), cfg, log=lambda *_: None)
    d = small / "features" / "clip_tiny"
    before = {p.name: p.stat().st_mtime_ns for p in d.glob("00000000*")}
    reference = pq.read_table(d / "00000001.parquet")
    # an interrupted shard: no marker, stale parts of a killed run
    (d / "00000001_stats.json").unlink()
    (d / "_parts" / "00000001").mkdir(parents=True)
    shutil.copy(d / "00000001.parquet", d / "_parts" / "00000001" / "stale.parquet")
    features.run_scorer(str(small), cfg, log=lambda *_: None)
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("00000000*")} == before
    redone = pq.read_table(d / "00000001.parquet")
    assert redone.column("uid").to_pylist() == reference.column("uid").to_pylist()  # no loss, no duplicates
    assert not (d / "_parts" / "00000001").exists()


def test_a_batch_embedded_again_after_a_node_loss_is_joined_once(featured_pool, tmp_path):
    """Ray re-runs a lost model actor's task (at least once): a batch whose part was written is embedded
    again, or cut differently. The shard's files hold each row once, as an undisturbed run's do, and a
    batch of a shard already joined leaves nothing behind."""
    from thresher.core import models
    from thresher.core.config import to_dict
    from thresher.stages.features import clip

    small = _small_pool(featured_pool, tmp_path, shards=(0,))
    cfg = features.ScorerConfig()
    pp = models.preprocess_config(cfg.model, cfg.pretrained)
    expected = Pool(str(small)).successful_rows(0).num_rows
    once, twice = str(tmp_path / "once"), str(tmp_path / "twice")
    batches = list(clip._decode_shards({"shard": np.array([0])}, str(small), once, pp, 50))
    embed = clip.ClipEmbedder(to_dict(cfg), once, pp, "cpu", 1)
    for b in batches:
        embed(b)

    def join(scorer_dir: str) -> None:  # as scoring does: the executor writes the marker, then cleans up
        stage = clip.FinalizeStage(scorer_dir, {0: expected}, 0)
        run_stage(stage, [0], executor=execute.LocalExecutor(), log=lambda *_: None).raise_if_failed("join")

    join(once)
    embed.dir = twice
    for b in [batches[0], *batches, batches[1]]:  # the first two batches again, as a retried task does
        embed(b)
    assert len(list((tmp_path / "twice" / "_parts" / "00000000").glob("*.parquet"))) == len(batches)
    join(twice)
    for f in ("00000000.parquet", "00000000.img.npy", "00000000.txt.npy"):
        assert (tmp_path / "twice" / f).read_bytes() == (tmp_path / "once" / f).read_bytes(), f
    embed(batches[0])  # a retried batch of the joined shard: no part is left over
    assert not (tmp_path / "twice" / "_parts" / "00000000").exists()
    # a retried task whose rows were batched differently: parts overlap, each row is kept once
    recut = str(tmp_path / "recut")
    embed.dir = recut
    both = {c: np.concatenate([batches[0][c], batches[1][c]]) for c in batches[0]}
    for b in [*batches, {c: v[25:75] for c, v in both.items()}]:
        embed(b)
    join(recut)
    a, b = pq.read_table(tmp_path / "once" / "00000000.parquet"), pq.read_table(tmp_path / "recut" / "00000000.parquet")
    assert b.column("uid").to_pylist() == a.column("uid").to_pylist()
    np.testing.assert_allclose(b.column("clip_score").to_numpy(), a.column("clip_score").to_numpy(), atol=1e-3)


@pytest.mark.parametrize("where", ["cpu", "actor"])
def test_corrupt_image_and_unreadable_shard_are_recorded(featured_pool, tmp_path, ray_local, where):
    small = _small_pool(featured_pool, tmp_path, shards=(0, 1, 2))
    # shard 0: one image's bytes replaced by garbage
    tar_path = small / "shards" / "00000000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            if m.name == victim:
                data = b"not an image"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    # shard 1: truncated mid-file, as a killed copy would leave it
    t1 = small / "shards" / "00000001.tar"
    t1.write_bytes(t1.read_bytes()[: t1.stat().st_size // 2 + 77])

    with pytest.raises(StageError, match="00000001"):
        features.run_scorer(str(small), features.ScorerConfig(decode=where), log=lambda *_: None)
    d = small / "features" / "clip_tiny"
    manifest = json.loads((d / "manifest.json").read_text())
    assert list(manifest["shards"]["failed"]) == ["00000001"]
    assert "unreadable tar" in manifest["shards"]["failed"]["00000001"]
    assert (d / "00000002_stats.json").exists()
    table = pq.read_table(d / "00000000.parquet").to_pylist()
    bad = [r for r in table if r["key"] == victim.split(".")[0]][0]
    assert bad["error"].startswith("decode_error") and bad["clip_score"] is None
    assert sum(r["error"] is not None for r in table) == 1
    with pytest.raises(StageError, match="00000001.*unreadable tar"):
        features.run_base(str(small), retries=0, log=lambda *_: None)
    assert (small / "features" / "base" / "00000002_stats.json").exists()
    base = pq.read_table(small / "features" / "base" / "00000000.parquet").to_pylist()
    assert [r for r in base if r["key"] == victim.split(".")[0]][0]["error"].startswith("decode_error")


def test_export_metadata_uses_datacomp_columns(featured_pool, tmp_path):
    from thresher.app import cli

    shutil.copytree(featured_pool / "features" / "clip_tiny", tmp_path / "clip_b32")
    pool = _small_pool(featured_pool, tmp_path / "p", shards=(0,))
    shutil.copytree(tmp_path / "clip_b32", pool / "features" / "clip_b32")
    for p in (pool / "features" / "clip_b32").glob("0000000[1-9]*"):
        p.unlink()
    assert cli.main(["export-metadata", str(pool), "--out", str(tmp_path / "meta.parquet")]) == 0
    table = pq.read_table(tmp_path / "meta.parquet")
    assert table.column_names == [
        "uid",
        "url",
        "text",
        "original_width",
        "original_height",
        "clip_b32_similarity_score",
        "clip_l14_similarity_score",
        "sha256",
    ]
    scores = dict(
        zip(
            *[
                pq.read_table(pool / "features" / "clip_b32" / "00000000.parquet").column(c).to_pylist()
                for c in ("uid", "clip_score")
            ]
        )
    )
    rows = table.to_pylist()
    assert len(rows) == len(scores)
    assert all(r["clip_b32_similarity_score"] == pytest.approx(scores[r["uid"]]) for r in rows)
    assert all(r["clip_l14_similarity_score"] is None for r in rows)


def test_precomputed_scores_and_npz_embeddings_are_imported(featured_pool, tmp_path):
    import pyarrow as pa

    pool = _small_pool(featured_pool, tmp_path / "p", shards=(0,))
    meta = pq.read_table(pool / "shards" / "00000000.parquet")
    rng = np.random.default_rng(0)
    score = rng.uniform(0.1, 0.4, meta.num_rows).astype(np.float32)
    pq.write_table(
        meta.append_column("clip_l14_similarity_score", pa.array(score)), pool / "shards" / "00000000.parquet"
    )
    # DataComp's layout: metadata X.parquet with an X.npz beside it, row-aligned (here in reverse order)
    npz_dir = tmp_path / "metadata"
    npz_dir.mkdir()
    order = np.arange(meta.num_rows)[::-1]
    pq.write_table(meta.select(["uid"]).take(pa.array(order)), npz_dir / "part0.parquet")
    emb = rng.normal(size=(meta.num_rows, 8)).astype(np.float32)
    np.savez(npz_dir / "part0.npz", l14_img=emb[order], l14_txt=-emb[order])
    manifest = features.import_precomputed(
        str(pool), "clip_l14", "clip_l14_similarity_score", npz_dir=str(npz_dir), log=lambda *_: None
    )
    assert manifest["source"].startswith("precomputed")
    table, img, txt = features.read_scorer(str(pool), "clip_l14", with_embeddings=True)
    ok = [i for i, s in enumerate(meta.column("status").to_pylist()) if s == "success"]
    np.testing.assert_allclose(table.column("clip_score").to_numpy(), score[ok], rtol=1e-6)
    np.testing.assert_allclose(img.astype(np.float32), emb[ok], atol=1e-2)
    np.testing.assert_allclose(txt.astype(np.float32), -emb[ok], atol=1e-2)


def test_decoding_in_the_model_actor_agrees_with_the_cpu_path(featured_pool, tmp_path, ray_local):
    """`decode: actor` (torchvision's decode_jpeg in the model actor: nvJPEG on a GPU, its CPU decoder
    here) against PIL in the decoding tasks, on two shards of the synthetic pool: the same rows and
    errors, and image embeddings within a cosine of 0.999 of each other (different resize kernels)."""
    small = _small_pool(featured_pool, tmp_path)
    for sid, where in (("cpu_decoded", "cpu"), ("actor_decoded", "actor")):
        m = features.run_scorer(str(small), features.ScorerConfig(scorer_id=sid, decode=where), log=lambda *_: None)
        assert m["decode"] == where and m["device"] == "cpu"
    a = features.read_scorer(str(small), "cpu_decoded", with_embeddings=True)
    b = features.read_scorer(str(small), "actor_decoded", with_embeddings=True)
    assert a[0].column("uid").to_pylist() == b[0].column("uid").to_pylist()
    assert a[0].column("error").to_pylist() == b[0].column("error").to_pylist()
    ok = np.linalg.norm(a[1].astype(np.float32), axis=1) > 0.5
    cos = (a[1][ok].astype(np.float32) * b[1][ok].astype(np.float32)).sum(axis=1)
    print(f"actor vs cpu decode: cosine min {cos.min():.5f}, mean {cos.mean():.6f} over {ok.sum()} images")
    assert ok.sum() > 100 and cos.min() >= 0.999
    np.testing.assert_array_equal(a[2], b[2])  # the text side does not depend on decoding


def test_decode_batch_falls_back_to_pil_and_records_what_nothing_can_read():
    from PIL import Image

    from thresher.core import decode, models

    pp = models.preprocess_config("thresher-tiny", None)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    jpg, png = io.BytesIO(), io.BytesIO()
    img.save(jpg, "JPEG", quality=95), img.save(png, "PNG")
    broken = jpg.getvalue()[:200]  # a JPEG's start only: decode_jpeg and PIL both refuse it
    blobs = [jpg.getvalue(), png.getvalue(), broken, b"", b"garbage"]
    pixels, errors = decode.decode_batch(blobs, ["", "", "", "image missing from the tar", ""], pp, "cpu")
    assert pixels.shape == (5, 64, 64, 3) and str(pixels.dtype) == "torch.uint8"
    assert errors[0] == errors[1] == "" and errors[2].startswith("decode_error")
    assert errors[3] == "image missing from the tar" and errors[4].startswith("decode_error")
    want = np.asarray(models.pil_transform(pp)(img), dtype=np.int16)
    assert np.abs(pixels[1].numpy().astype(np.int16) - want).max() == 0  # PNG: PIL's own path
    # JPEG: torchvision's decoder and tensor resize against PIL's on the same file, a level or two apart
    want_jpg = np.asarray(models.pil_transform(pp)(Image.open(io.BytesIO(jpg.getvalue())).convert("RGB")), np.int16)
    assert np.abs(pixels[0].numpy().astype(np.int16) - want_jpg).mean() < 2
    assert int(pixels[2].sum()) == int(pixels[3].sum()) == 0
    assert decode.resolve("auto", "cpu", pp) == "cpu" and decode.resolve("auto", "cuda:0", pp) == "actor"


def test_decoding_tasks_resize_and_crop_as_open_clip_does_without_torch(featured_pool):
    """`models.resize_crop`, PIL alone, gives open_clip's own pixels (`pil_transform`: torchvision's Resize
    and CenterCrop) for each model's preprocessing, bilinear and squash too, on the pool's images and on
    odd sizes and modes; and a decoding task imports neither torch nor open_clip (issue 26, point 2)."""
    import itertools
    import os
    import subprocess
    import sys

    from PIL import Image

    from thresher.core import decode, models

    rng = np.random.default_rng(0)
    odd = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        for (w, h), mode in itertools.product(itertools.product([1, 63, 64, 65, 97, 224, 301], repeat=2), ("L", "RGB"))
    ]
    with tarfile.open(featured_pool / "shards" / "00000000.tar") as tar:
        jpegs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")][:60]
    images = odd + [decode.open_image(b).convert("RGB") for b in jpegs]
    for model in ("thresher-tiny", "thresher-small", "ViT-B-32"):
        pp = models.preprocess_config(model, None)
        for cfg in (pp, {**pp, "interpolation": "bilinear"}, {**pp, "resize_mode": "squash"}):
            ours, theirs = models.resize_crop(cfg), models.pil_transform(cfg)
            for img in images:
                np.testing.assert_array_equal(np.asarray(ours(img)), np.asarray(theirs(img)))
    assert models.resize_crop({**pp, "resize_mode": "longest"}) is None  # open_clip's own classes then

    code = (
        "import sys\n"
        "from thresher.stages.features import clip\n"
        f"pp = {models.preprocess_config('thresher-tiny', None)!r}\n"
        f"n = sum(len(b['key']) for b in clip._decode_shards({{'shard': [0]}}, {str(featured_pool)!r}, '/x', pp, 64))\n"
        "assert n > 0 and not {'torch', 'open_clip', 'torchvision'} & set(sys.modules), sorted(sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_shard_with_no_successful_row_is_joined_into_empty_files(tmp_path):
    """Every URL of a shard failed: no batch reaches the model, so the join has no part; it wrote nothing
    and failed on an empty concatenation before (pa.concat_tables([]))."""
    from thresher.stages.features import clip

    stats = clip.finalize_shard(3, str(tmp_path), 0, dim=8)
    assert stats == {"shard": 3, "count": 0, "errors": 0, "dim": 8}
    assert pq.read_table(tmp_path / "00000003.parquet").num_rows == 0
    assert np.load(tmp_path / "00000003.img.npy").shape == (0, 8)
    with pytest.raises(StageError, match="0 rows embedded, 2 expected"):
        clip.finalize_shard(4, str(tmp_path), 2, dim=8)
