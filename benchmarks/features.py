"""Feature stage (CLIP embeddings + scores) against a plain single-process loop.

The reference is what a user would write by hand: webdataset reading the same shards, open_clip's
own preprocess and tokenizer, the same model and batch size, torch using every core, in one process.
Ours is `thresher features POOL --no-base` on the same shards. Each is timed as a whole cold command,
start-up included (imports, model build; for ours also starting Ray and its workers), since that is
what a user waits for. Both embed image and caption and compute the score.

    python benchmarks/features.py [--samples 4000] [--model thresher-small] [--batch-size 256]
    python benchmarks/features.py --device cuda --model ViT-B-32 --samples 20000   # on a GPU machine
    python benchmarks/features.py --decode actor    # ours decoding in the model actor (nvJPEG on a GPU)

The pool is written straight to disk as shards (drawn with the synthetic world's renderer), so the
benchmark needs no server and no download. Prints samples/s for both and the ratio ours/plain
(target on CPU: >= 0.9). With --model-only it times just our model actor on pre-decoded batches,
which is the GPU figure to compare with clip-retrieval's ~2,500 img/s per A100.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet  # noqa: E402,F401 - pa.parquet below

from thresher.core import schema  # noqa: E402


def _make_shard(job) -> None:
    out, shard, n, per_shard = job
    from thresher.synthetic.drawing import encode, render
    from thresher.synthetic.world import english_caption, random_scene

    rng = np.random.default_rng([7, shard])
    rows = []
    with tarfile.open(out / "shards" / f"{shard:08d}.tar", "w") as tar:
        for j in range(n):
            key = f"{shard:08d}{j:04d}"
            scene = random_scene(rng)
            w, h = int(rng.integers(256, 512)), int(rng.integers(256, 512))
            data = encode(render(scene, w, h, rng), "jpg", 90)
            caption = english_caption(scene, rng)
            uid = f"{shard:016x}{j:016x}"
            meta = {
                "uid": uid,
                "key": key,
                "url": f"http://example.invalid/{key}.jpg",
                "caption": caption,
                "status": "success",
                "failure": None,
                "error_message": None,
                "width": w,
                "height": h,
                "original_width": w,
                "original_height": h,
                "sha256": None,
            }
            rows.append(meta)
            for ext, payload in (("jpg", data), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    pa.parquet.write_table(pa.Table.from_pylist(rows, schema=schema.POOL), out / "shards" / f"{shard:08d}.parquet")
    (out / "shards" / f"{shard:08d}_stats.json").write_text(json.dumps({"count": n}))


def make_pool(out: Path, samples: int, per_shard: int) -> Path:
    (out / "shards").mkdir(parents=True, exist_ok=True)
    jobs = [(out, s, min(per_shard, samples - s * per_shard), per_shard) for s in range(-(-samples // per_shard))]
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_make_shard, jobs)
    return out


def plain_loop(pool: Path, model_name: str, batch_size: int, device: str) -> int:
    import open_clip
    import torch
    import webdataset as wds

    from thresher.core import models

    models.register_project_models()
    torch.set_num_threads(os.cpu_count())
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    tars = sorted(str(p) for p in (pool / "shards").glob("*.tar"))
    ds = wds.WebDataset(tars, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt").map_tuple(preprocess, str)
    n = 0
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    scores = []
    for images, texts in ds.batched(batch_size, partial=True):
        with torch.inference_mode(), autocast:
            img = torch.nn.functional.normalize(model.encode_image(images.to(device)).float(), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(tokenizer(list(texts)).to(device)).float(), dim=-1)
            scores.append((img * txt).sum(-1).cpu())
        n += len(texts)
    return n


def timed_command(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0, proc.stdout


def model_only(model_name: str, batch_size: int, device: str, batches: int) -> float:
    """Our actor's model call alone (normalise, encode image and text, L2, score) on decoded uint8 batches."""
    import torch

    from thresher.core import models
    from thresher.stages.features import clip

    pp = models.preprocess_config(model_name, None)
    actor = clip.ClipEmbedder.__new__(clip.ClipEmbedder)  # the model part of the actor, no writing
    clip.ClipEmbedder.__init__(
        actor, clip.to_dict(clip.ScorerConfig(model=model_name)), "/tmp", pp, device, os.cpu_count()
    )
    size = pp["size"]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (batch_size, size, size, 3), dtype=np.uint8)
    tokens = rng.integers(1, 40000, (batch_size, 77 if model_name.startswith("ViT") else 32)).astype(np.int64)
    ctx = (
        torch.autocast(device_type=device, dtype=actor.autocast)
        if actor.autocast
        else torch.autocast(device, enabled=False)
    )

    def step():
        with torch.inference_mode(), ctx:
            image = models.normalize(pixels, pp, device, torch.float32)
            img = torch.nn.functional.normalize(actor.model.encode_image(image).float(), dim=-1)
            txt = torch.nn.functional.normalize(
                actor.model.encode_text(torch.as_tensor(tokens, device=device)).float(), dim=-1
            )
            return (img * txt).sum(-1).cpu()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - t0)


def _decode_one(job) -> int:
    pool, shard, pp = job
    from thresher.stages.features import clip

    return sum(len(b["key"]) for b in clip._decode_shards({"shard": [shard]}, pool, "/tmp", pp, 256))


def decode_only(pool: Path, model_name: str) -> tuple[int, float]:
    """Our decoding step (read tar, decode, resize/crop; captions are tokenized in the model actor) on every
    core, without Ray."""
    from thresher.core import models

    pp = models.preprocess_config(model_name, None)
    shards = sorted(int(p.name[:8]) for p in (pool / "shards").glob("*.tar"))
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(os.cpu_count()) as workers:
        n = sum(workers.map(_decode_one, [(str(pool), s, pp) for s in shards]))
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--model", default="thresher-small")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--actor-cpus", type=float, default=1.0)
    ap.add_argument(
        "--decode", default="auto", help="ours: auto, cpu (PIL in decoding tasks) or actor (thresher/core/decode.py)"
    )
    ap.add_argument("--model-only", action="store_true", help="time only our model actor on decoded batches")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true", help="skip ours (e.g. where Ray is not installed)")
    ap.add_argument("--decode-only", action="store_true", help="time only our decoding step, on every core")
    ap.add_argument("--plain-only", default=None, help=argparse.SUPPRESS)  # the reference's own process
    args = ap.parse_args()

    if args.plain_only:
        print(json.dumps({"n": plain_loop(Path(args.plain_only), args.model, args.batch_size, args.device)}))
        return

    if args.model_only:
        rate = model_only(args.model, args.batch_size, args.device, args.batches)
        print(f"model only: {args.model} on {args.device}, batch {args.batch_size}: {rate:.0f} image-text pairs/s")
        print(json.dumps({"model": args.model, "device": args.device, "model_only_pairs_per_s": round(rate, 1)}))
        return

    work = Path(tempfile.mkdtemp(prefix="thresher-feat-bench-"))
    try:
        t0 = time.perf_counter()
        pool = make_pool(work / "pool", args.samples, args.per_shard)
        print(f"pool of {args.samples} samples written in {time.perf_counter() - t0:.1f}s", flush=True)
        if args.decode_only:
            n, t = decode_only(pool, args.model)
            print(
                f"decode only: {n} samples in {t:.1f}s on {os.cpu_count()} cores = {n / t:.0f} samples/s "
                f"({n / t / os.cpu_count():.0f} per core)"
            )
            print(json.dumps({"model": args.model, "decode_samples_per_s": round(n / t, 1), "cpus": os.cpu_count()}))
            return
        common = ["--model", args.model, "--batch-size", str(args.batch_size), "--device", args.device]
        t_plain, out = timed_command([sys.executable, __file__, "--plain-only", str(pool), *common])
        n_plain = json.loads(out.strip().splitlines()[-1])["n"]
        assert n_plain == args.samples, n_plain
        print(f"plain loop : {n_plain} samples in {t_plain:.1f}s = {n_plain / t_plain:.0f} samples/s", flush=True)
        result = {
            "model": args.model,
            "device": args.device,
            "samples": args.samples,
            "batch_size": args.batch_size,
            "cpus": os.cpu_count(),
            "plain_samples_per_s": round(n_plain / t_plain, 1),
        }
        if not args.no_ray:
            t_ours, _ = timed_command(
                [
                    sys.executable,
                    "-m",
                    "thresher.app.cli",
                    "features",
                    str(pool),
                    "--no-base",
                    "--scorer-id",
                    "bench",
                    "--actor-cpus",
                    str(args.actor_cpus),
                    "--decode",
                    args.decode,
                    *common,
                ]
            )
            stats = list((pool / "features" / "bench").glob("*_stats.json"))
            n_ours = sum(json.loads(p.read_text())["count"] for p in stats)
            assert n_ours == n_plain, (n_ours, n_plain)
            ratio = (n_ours / t_ours) / (n_plain / t_plain)
            print(f"thresher   : {n_ours} samples in {t_ours:.1f}s = {n_ours / t_ours:.0f} samples/s")
            print(f"ratio ours/plain: {ratio:.3f} (target on CPU >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
            result.update(ours_samples_per_s=round(n_ours / t_ours, 1), ratio=round(ratio, 3))
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
