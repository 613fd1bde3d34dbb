"""How cost grows with the pool: a metadata-only DataComp pool of N rows through ingest, exact dedup,
filter and `subset --uids-only`, run as a user runs them (the `thresher` CLI, one process a step) on one
Ray instance this script starts, for each N in --sizes.

    python benchmarks/scale.py [--sizes 1000000,4000000,16000000] [--work /tmp/thresher-scale]
    python benchmarks/scale.py --sizes 100000,400000            # a smoke test

For each size it generates (not timed) DataComp-format metadata Parquet, ~250k rows a file (uid, url,
text with ~10% short or non-English captions, original sizes, the B/32 and L/14 scores, empty
face_bboxes, sha256 with ~2% exact repeats), and for sizes up to --embeddings-up-to rows `STEM.npz`
files of clustered unit L/14-style image embeddings (`l14_img`, float16, --dim 64). Then it times:

    1 ingest  thresher import-metadata META --out POOL [--npz-dir META]
    2 dedup   thresher dedup POOL --partitions 16 --no-perceptual --no-semantic --no-contamination --scorer clip_l14
    3 filter  thresher filter POOL --recipe datacomp-image-based-and-clip-l14-30pct --var target=T.npy --var clusters=K
              (with embeddings: T = 1,000 pool embeddings plus noise, K = rows / 1,000 capped by --max-clusters)
              or --recipe datacomp-clip-l14-30pct (without)
    4 subset  thresher subset POOL --recipe R --size N/10 --uids-only OUT.npy

Each step's wall seconds, the `thresher` driver's peak RSS and the largest Ray worker's peak RSS (psutil,
every 0.2 s; workers are this Ray instance's processes named ray::* or running default_worker.py) are
measured; the bytes Ray spilled during the size come from `ray memory --stats-only`. One JSON line a size.
The reference is the smallest size, measured in the same run: at the end the script prints the issue's
growth ratios, largest / smallest, for the driver's peak RSS (goal <= 1.2) and the time per row (goal
<= 1.3), with pass/fail, and the same ratios per step.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not this folder (select.py)

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray  # noqa: F401 - puts Ray's bundled psutil (ray/thirdparty_files) on the path

psutil = importlib.import_module("psutil")  # Ray's copy: not a dependency of its own, so after `import ray`

# Ray's token authentication is on by default for a new local instance, and the `thresher` commands
# that join it by address would need its token; this instance is local to the machine and the script's own
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
BIN = Path(sys.executable).parent
THRESHER = str(BIN / "thresher")
RAY = str(BIN / "ray")
GB = 2**30

WORDS = (
    "a the photo of dog cat red blue house car tree beach sunset city street man woman child old new "
    "wooden table chair garden flower mountain river lake boat bridge night light small large white black "
    "green vintage modern kitchen room window door market food plate coffee cup book shop sign road"
).split()
FOREIGN = (
    "das haus und der hund ein rotes auto la casa del perro una foto de gato le chat noir sur la table "
    "il gatto nero sulla tavola het huis van de hond"
).split()


# ---------------------------------------------------------------------------------------------------
# the input (not timed)


def _captions(rng: np.random.Generator, n: int) -> list[str]:
    kind = rng.random(n)
    lengths = rng.integers(3, 10, n)
    words = np.array(WORDS)
    foreign = np.array(FOREIGN)
    out = []
    for i in range(n):
        if kind[i] < 0.05:  # short: one word, or a few characters
            out.append(str(words[rng.integers(len(words))])[:4] if kind[i] < 0.025 else "img")
        elif kind[i] < 0.10:  # not English
            out.append(" ".join(foreign[rng.integers(0, len(foreign), lengths[i])]))
        else:
            out.append(" ".join(words[rng.integers(0, len(words), lengths[i])]))
    return out


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    s = rng.bytes(n * nbytes).hex()
    w = 2 * nbytes
    return [s[i * w : (i + 1) * w] for i in range(n)]


def generate(meta: Path, rows: int, per_file: int, dim: int, with_emb: bool, seed: int = 0) -> np.ndarray | None:
    """Writes META/{i:05d}.parquet (and .npz); returns 1,000 target embeddings when with_emb."""
    meta.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(8, rows // 2000), dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    targets = None
    for f, lo in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - lo)
        idx = np.arange(lo, lo + n)
        sha = np.array(_hex(rng, n, 32), dtype=object)
        rep = rng.choice(n, n // 50, replace=False)  # ~2% repeat another row's bytes: work for exact dedup
        sha[rep] = sha[rng.integers(0, n, len(rep))]
        b32 = rng.normal(0.28, 0.05, n).clip(0.0, 0.5)
        table = pa.table(
            {
                "uid": _hex(rng, n, 16),
                "url": [f"https://host{i % 5000}.example/img/{i}.jpg" for i in idx],
                "text": _captions(rng, n),
                "original_width": pa.array(rng.integers(64, 2048, n), pa.int64()),
                "original_height": pa.array(rng.integers(64, 2048, n), pa.int64()),
                "clip_b32_similarity_score": pa.array(b32, pa.float32()),
                "clip_l14_similarity_score": pa.array(b32 + rng.normal(0, 0.02, n), pa.float32()),
                "face_bboxes": pa.array([[] for _ in range(n)], pa.list_(pa.list_(pa.float64()))),
                "sha256": pa.array(sha.tolist(), pa.string()),
            }
        )
        pq.write_table(table, meta / f"{f:05d}.parquet")
        if with_emb:
            emb = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, dim)).astype(np.float32) * (
                0.6 / dim**0.5
            )
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            np.savez(meta / f"{f:05d}.npz", l14_img=emb.astype(np.float16))
            if targets is None:
                t = emb[rng.choice(n, min(n, 1000), replace=False)] + rng.normal(size=(min(n, 1000), dim)) * (
                    0.3 / dim**0.5
                )
                targets = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    return targets


# ---------------------------------------------------------------------------------------------------
# Ray, and what each step costs


class RayHead:
    """A local Ray instance in a child process this script owns (its end ends the instance)."""

    CODE = (
        "import sys, ray\n"
        "kw = dict(address='local', num_cpus=int(sys.argv[1]), include_dashboard=False)\n"
        "if int(sys.argv[2]): kw['object_store_memory'] = int(sys.argv[2])\n"
        "ray.init(**kw)\n"
        "print(ray.get_runtime_context().gcs_address, flush=True)\n"
        "sys.stdin.read()\n"
    )

    def __init__(self, cpus: int, object_store: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(cpus), str(object_store)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("the Ray head did not start")

    def workers(self) -> list[psutil.Process]:
        out = []
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return out
        for p in kids:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if cmd and (cmd[0].startswith("ray::") or any("default_worker.py" in c for c in cmd)):
                out.append(p)
        return out

    def spilled_bytes(self) -> int:
        res = subprocess.run(
            [RAY, "memory", "--stats-only", "--address", self.address], capture_output=True, text=True, timeout=120
        )
        m = re.search(r"Spilled (\d+) MiB", res.stdout)
        return int(m.group(1)) * 2**20 if m else 0

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)


def timed(cmd: list[str], head: RayHead, log: Path) -> dict:
    """Runs one thresher command; wall seconds, the driver's and the largest worker's peak RSS."""
    peak = {"driver": 0, "task": 0}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        driver = psutil.Process(proc.pid)
        done = threading.Event()

        def poll():
            while not done.is_set():
                try:
                    peak["driver"] = max(peak["driver"], driver.memory_info().rss)
                except psutil.Error:
                    pass
                for w in head.workers():
                    try:
                        peak["task"] = max(peak["task"], w.memory_info().rss)
                    except psutil.Error:
                        pass
                done.wait(0.2)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    secs = time.perf_counter() - t0
    if rc:
        tail = log.read_text().strip().splitlines()[-4:]
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited {rc}:\n  " + "\n  ".join(tail))
    return {"seconds": round(secs, 2), "driver_peak_rss_gb": peak["driver"] / GB, "task_peak_rss_gb": peak["task"] / GB}


def run_size(rows: int, args, head: RayHead, cores: int) -> dict:
    work = Path(args.work) / f"n{rows}"
    shutil.rmtree(work, ignore_errors=True)
    meta, pool = work / "meta", work / "pool"
    with_emb = rows <= args.embeddings_up_to
    t0 = time.perf_counter()
    targets = generate(meta, rows, args.rows_per_file, args.dim, with_emb)
    gen = time.perf_counter() - t0
    print(f"[scale] {rows:,} rows generated in {gen:.0f} s (not counted); embeddings: {with_emb}", flush=True)
    addr = ["--ray-address", head.address]
    if with_emb:
        np.save(work / "target.npy", targets)
        clusters = max(10, min(args.max_clusters, rows // 1000))
        recipe = "datacomp-image-based-and-clip-l14-30pct"
        rvars = ["--var", f"target={work / 'target.npy'}", "--var", f"clusters={clusters}"]
    else:
        clusters, recipe, rvars = 0, "datacomp-clip-l14-30pct", []
    steps = {
        "ingest": [THRESHER, "import-metadata", str(meta), "--out", str(pool), *addr]
        + (["--npz-dir", str(meta)] if with_emb else []),
        "dedup": [
            THRESHER,
            "dedup",
            str(pool),
            "--partitions",
            str(args.partitions),
            "--no-perceptual",
            "--no-semantic",
            "--no-contamination",
            "--scorer",
            "clip_l14",
            *addr,
        ],
        "filter": [THRESHER, "filter", str(pool), "--recipe", recipe, *rvars, *addr],
        "subset": [
            THRESHER,
            "subset",
            str(pool),
            "--recipe",
            recipe,
            *rvars,
            "--size",
            str(rows // 10),
            "--uids-only",
            str(work / "uids.npy"),
            *addr,
        ],
    }
    spilled0 = head.spilled_bytes()
    rec: dict = {"rows": rows, "recipe": recipe, "clusters": clusters, "embeddings": with_emb, "cores": cores}
    per: dict = {}
    error = None
    for name, cmd in steps.items():
        try:
            per[name] = timed(cmd, head, work / f"{name}.log")
        except RuntimeError as err:
            error = str(err)
            print(f"[scale] {rows:,}: {error}", file=sys.stderr, flush=True)
            break
        print(
            f"[scale] {rows:,} {name}: {per[name]['seconds']:.1f} s, driver {per[name]['driver_peak_rss_gb']:.2f} GB, "
            f"largest task {per[name]['task_peak_rss_gb']:.2f} GB",
            flush=True,
        )
    secs = sum(s["seconds"] for s in per.values())
    rec.update(
        seconds=round(secs, 2),
        driver_peak_rss_gb=round(max((s["driver_peak_rss_gb"] for s in per.values()), default=0), 3),
        task_peak_rss_gb=round(max((s["task_peak_rss_gb"] for s in per.values()), default=0), 3),
        spilled_bytes=head.spilled_bytes() - spilled0,
        seconds_per_million_rows_per_core=round(secs * cores / (rows / 1e6), 2),
        steps={k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in per.items()},
        pool_bytes=sum(f.stat().st_size for f in pool.rglob("*") if f.is_file()) if pool.exists() else 0,
        load_before=round(os.getloadavg()[0], 2),
    )
    if error:
        rec["error"] = error
    elif (work / "uids.npy").exists():
        rec["subset_uids"] = len(np.load(work / "uids.npy"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,4000000,16000000", help="comma-separated row counts")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "thresher-scale"))
    ap.add_argument("--rows-per-file", type=int, default=250_000)
    ap.add_argument("--embeddings-up-to", type=int, default=2_000_000, help="largest size given .npz embeddings")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-clusters", type=int, default=2000, help="cap on image_clusters' k")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2, help="the Ray instance's CPUs (the cores of the per-core rate)")
    ap.add_argument("--object-store-gb", type=float, default=0, help="0: Ray's default (30%% of memory)")
    ap.add_argument("--keep", action="store_true", help="keep each size's files")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(
        f"[scale] load average {os.getloadavg()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().available / GB:.1f} GB available, "
        f"{shutil.disk_usage(tempfile.gettempdir()).free / GB:.0f} GB free on {tempfile.gettempdir()}",
        flush=True,
    )
    head = RayHead(args.cpus, int(args.object_store_gb * GB))
    print(f"[scale] Ray at {head.address}, {args.cpus} CPUs", flush=True)
    results = []
    try:
        for rows in sizes:
            rec = run_size(rows, args, head, args.cpus)
            results.append(rec)
            print(json.dumps(rec), flush=True)
    finally:
        head.close()
    ok = [r for r in results if "error" not in r]
    if len(ok) < 2:
        print("[scale] fewer than two sizes finished: no ratios")
        return
    ref, big = ok[0], ok[-1]
    print(
        f"\nreference: the smallest size, {ref['rows']:,} rows (same run); largest: {big['rows']:,} rows "
        f"({big['rows'] / ref['rows']:.0f}x)"
    )
    if ref["recipe"] != big["recipe"]:
        print(
            f"note: the filter/subset recipe differs: {ref['recipe']} at the reference, {big['recipe']} at the largest"
        )
    mem = big["driver_peak_rss_gb"] / ref["driver_peak_rss_gb"]
    per_row = (big["seconds"] / big["rows"]) / (ref["seconds"] / ref["rows"])
    print(f"driver peak RSS, largest / smallest: {mem:.2f} (goal <= 1.2): {'pass' if mem <= 1.2 else 'FAIL'}")
    print(f"time per row, largest / smallest: {per_row:.2f} (goal <= 1.3): {'pass' if per_row <= 1.3 else 'FAIL'}")
    tmem = big["task_peak_rss_gb"] / max(ref["task_peak_rss_gb"], 1e-9)
    print(f"largest task's peak RSS, largest / smallest: {tmem:.2f}")
    for name in ref["steps"]:
        if name in big["steps"]:
            a, b = ref["steps"][name], big["steps"][name]
            print(
                f"  {name:7s} time per row {(b['seconds'] / big['rows']) / (a['seconds'] / ref['rows']):5.2f}  "
                f"driver RSS {b['driver_peak_rss_gb'] / a['driver_peak_rss_gb']:5.2f}  "
                f"task RSS {b['task_peak_rss_gb'] / max(a['task_peak_rss_gb'], 1e-9):5.2f}"
            )


if __name__ == "__main__":
    main()
