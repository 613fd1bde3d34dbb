"""Download stage throughput against the plain img2dataset command line.

Both commands download the same URL list from the same local threaded server, with the same
processes, threads, image size, shard size, timeout and retries, writing WebDataset with Parquet
metadata and sha256. Each is timed as a whole command, from start to exit (so ours includes starting
Ray and ingesting the list). Runs alternate (plain, ours, plain, ours, ...) and the best of each is
kept, which evens out the page cache and background noise.

    python benchmarks/download.py [--samples 20000] [--processes 2] [--threads 32] [--repeats 2]

Prints samples/s for both and the ratio ours/plain. Target: >= 0.9 (the wrapper costs at most 10%).
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from thresher.synthetic.synth import DEFAULT_PROPORTIONS, SynthConfig, generate  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not start on port {port}")


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")
    return elapsed


def count_success(out: Path, plain: bool) -> int:
    import pyarrow.parquet as pq

    folder = out if plain else out / "shards"
    return sum(
        pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success")
        for p in folder.glob("*.parquet")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the pool source here (reused across runs)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="thresher-bench-"))
    port = 18765
    src = work / f"source-{args.samples}"
    # planted stalls would measure waiting, not throughput: none here; every other fault stays
    proportions = {**DEFAULT_PROPORTIONS, "timeout": 0.0}
    generate(src, SynthConfig(samples=args.samples, seed=0, port=port, proportions=proportions))
    urls = src / "urls.parquet"

    bindir = Path(sys.executable).parent
    server = subprocess.Popen(
        [sys.executable, "-m", "thresher.app.cli", "serve", str(src), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        common = dict(timeout="10", retries="2")
        plain_cmd = lambda out: [  # noqa: E731
            str(bindir / "img2dataset"),
            "--url_list",
            str(urls),
            "--input_format",
            "parquet",
            "--url_col",
            "url",
            "--caption_col",
            "text",
            "--output_format",
            "webdataset",
            "--output_folder",
            str(out),
            "--processes_count",
            str(args.processes),
            "--thread_count",
            str(args.threads),
            "--image_size",
            str(args.image_size),
            "--resize_mode",
            "keep_ratio_largest",
            "--resize_only_if_bigger",
            "True",
            "--number_sample_per_shard",
            str(args.per_shard),
            "--timeout",
            common["timeout"],
            "--retries",
            common["retries"],
            "--save_additional_columns",
            '["uid"]',
            "--extract_exif",
            "False",
            "--compute_hash",
            "sha256",
            "--oom_shard_count",
            "8",
            "--distributor",
            "multiprocessing",
            "--user_agent_token",
            "thresher",
            "--disallowed_header_directives",
            '["noai","noimageai","noindex","noimageindex"]',
        ]
        ours_cmd = lambda out: [  # noqa: E731
            str(bindir / "thresher"),
            "download",
            str(urls),
            "--out",
            str(out),
            "--processes",
            str(args.processes),
            "--threads",
            str(args.threads),
            "--image-size",
            str(args.image_size),
            "--samples-per-shard",
            str(args.per_shard),
            "--timeout",
            common["timeout"],
            "--retries",
            common["retries"],
            "--allow-private-addresses",
        ]
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        successes = {}
        for rep in range(args.repeats):
            for name, make in (("plain", plain_cmd), ("ours", ours_cmd)):
                out = work / f"out-{name}"
                shutil.rmtree(out, ignore_errors=True)
                t = timed(make(out), work / f"{name}-{rep}.log")
                times[name].append(t)
                successes[name] = count_success(out, plain=name == "plain")
                print(f"  run {rep + 1} {name:5s}: {t:6.1f}s  ({args.samples / t:7.0f} samples/s)", flush=True)
    finally:
        server.terminate()
        server.wait()

    if successes["plain"] != successes["ours"]:
        raise SystemExit(f"the two downloads disagree: {successes}")
    best = {k: min(v) for k, v in times.items()}
    rate = {k: args.samples / v for k, v in best.items()}
    ratio = rate["ours"] / rate["plain"]
    result = {
        "samples": args.samples,
        "successes": successes["ours"],
        "processes": args.processes,
        "threads": args.threads,
        "image_size": args.image_size,
        "cpus": os.cpu_count(),
        "plain_samples_per_s": round(rate["plain"], 1),
        "ours_samples_per_s": round(rate["ours"], 1),
        "ratio": round(ratio, 3),
        "target": 0.9,
    }
    print(f"plain img2dataset : {rate['plain']:8.1f} samples/s (best of {args.repeats}: {best['plain']:.1f}s)")
    print(f"thresher download : {rate['ours']:8.1f} samples/s (best of {args.repeats}: {best['ours']:.1f}s)")
    print(f"ratio ours/plain  : {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(json.dumps(result))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
