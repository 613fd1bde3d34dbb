"""Per-stage throughputs of the build_subset job on the synthetic pool: the CPU figures `--plan` uses.

    python benchmarks/stages.py [--samples 20000] [--write]

Runs `thresher run jobs/build_subset.yaml` as a user would (a cold command, a fresh directory, the pool
generated and served on 127.0.0.1), reads each step's seconds from the job's completion records
(OUT/_job/NN-COMMAND.json), and prints samples/s per core for each stage. With --write, the `stages`
block of configs/throughputs.yaml is updated with these figures, today's date and this machine's
core count. Step times include each step's own start-up (Ray tasks, model builds), as a real job's do.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not benchmarks/ (select.py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# throughputs.yaml key -> (job step file name, what the rate counts)
STAGES = {
    "synth": ("01-synth", "pool"),
    "download": ("02-download", "pool"),
    "features_base": ("03-features", "downloaded"),
    "dedup_exact_pdq": ("07-dedup", "downloaded"),
    "audit_report": ("11-audit", "subset"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--write", action="store_true", help="update configs/throughputs.yaml's stages block")
    ap.add_argument(
        "--dir",
        default=None,
        help="job directory to use and keep (re-running resumes; finished "
        "steps keep the seconds of the run that did them)",
    )
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    thresher = str(Path(sys.executable).with_name("thresher"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.dir) if args.dir else Path(tmp) / "job"
        t0 = time.perf_counter()
        synth = out / "source" / "synth.json"  # a kept directory resumes: the same port, so the same steps
        port = json.loads(synth.read_text())["config"]["port"] if synth.exists() else free_port()
        subprocess.run(
            [
                thresher,
                "run",
                str(ROOT / "jobs" / "build_subset.yaml"),
                "--out",
                str(out),
                "--var",
                f"samples={args.samples}",
                "--var",
                f"port={port}",
            ],
            check=True,
        )
        wall = time.perf_counter() - t0
        steps = {p.stem: json.loads(p.read_text()) for p in sorted((out / "_job").glob("*.json"))}
        counts = json.loads((out / "pool" / "manifest.json").read_text())["counts"]
        subset = json.loads((out / "subset" / "manifest.json").read_text())["size"]
    n = {"pool": args.samples, "downloaded": counts["status"].get("success", 0), "subset": subset}
    print(f"build_subset job, {args.samples} samples, {cores} cores: {wall:.0f} s in all")
    print(f"{'step':14s} {'seconds':>8s}")
    for name, rec in steps.items():
        print(f"{name:14s} {rec['seconds']:8.1f}")
    rates = {}
    for key, (step, what) in STAGES.items():
        rates[key] = n[what] / steps[step]["seconds"] / cores
        print(f"{key}: {rates[key]:,.0f} samples/s per core ({n[what]} {what} samples in {steps[step]['seconds']} s)")
    if args.write:
        path = ROOT / "configs" / "throughputs.yaml"
        text = path.read_text()
        date = time.strftime("%Y-%m-%d")
        for key, rate in rates.items():
            text = re.sub(
                rf"^(  {key}: {{rate: )[0-9.e+]+(,.*measured: \")[^\"]*(\"}})$",
                lambda m: f"{m.group(1)}{rate:.3g}{m.group(2)}{date}{m.group(3)}",
                text,
                flags=re.M,
            )
        path.write_text(text)
        print(f"updated {path}")


if __name__ == "__main__":
    main()
