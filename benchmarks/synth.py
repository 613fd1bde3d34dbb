"""Synthetic pool generation time. Target: 10,000 samples in under 60 s on 2 cores.

    python benchmarks/synth.py [--samples 10000] [--workers 0]

Prints the wall time, samples/s, and the ratio of the time to the 60 s budget (<= 1.0 meets it).
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
import sys
import tempfile
import time
from pathlib import Path

from thresher.synthetic.synth import SynthConfig, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=60.0)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="thresher-synth-bench-"))
    try:
        t0 = time.perf_counter()
        generate(out / "pool", SynthConfig(samples=args.samples, workers=args.workers), log=lambda *_: None)
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ratio = elapsed / args.budget_s * 10000 / args.samples
    print(
        f"synth: {args.samples} samples in {elapsed:.1f}s ({args.samples / elapsed:.0f} samples/s) on "
        f"{os.cpu_count()} cores; time per 10k / 60 s budget = {ratio:.2f} (<= 1.0 meets the target)"
    )
    print(json.dumps({"samples": args.samples, "seconds": round(elapsed, 1), "budget_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
