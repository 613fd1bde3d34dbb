"""Training at the tiny scales: wall time per run, and throughput against a plain open_clip_train command.

    python benchmarks/train.py [--scale tiny] [--compare tiny/w32-8k --compare tiny/w64-8k ...]

Generates 2,000 clean image-caption pairs (the synthetic pool's trusted set) as WebDataset shards, then:
- runs `thresher train DATA --scale S` (a subprocess each) for every scale of `--scale`, printing wall
  time, samples seen and samples/s;
- for each `--compare` scale, runs the plain command with the same arguments: `python -m
  open_clip_train.main ...` (our tiny model configs registered with open_clip.add_model_config, nothing
  else), and prints samples/s of both and the ratio ours/plain. Target: ratio >= 0.95. For scales with
  `shard_image_size` the plain command runs twice: on the same shards (what a user would run by hand),
  and on the resized copies our run made (the same work as ours, so the ratio is our overhead alone).
Samples/s is samples seen over the process's wall time, start-up included (ours includes resizing).
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

# sys.path[0] is this directory, which holds select.py: replace it with the repository root so that
# the file cannot shadow the standard library's select module
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "from open_clip_train.main import main; sys.exit(main(sys.argv[2:]))"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny", help="scale set whose runs are timed")
    ap.add_argument("--compare", action="append", help="scales compared with plain open_clip_train")
    args = ap.parse_args()
    compare = args.compare or ["tiny/w32-8k", "tiny/w64-8k", "tiny/w128-8k"]
    from thresher.experiments import train
    from thresher.synthetic.synth import SynthConfig, generate

    thresher = str(Path(sys.executable).with_name("thresher"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        generate(
            src, SynthConfig(samples=100, trusted=2000, eval_classification=10, eval_retrieval=10), log=lambda *_: None
        )
        data = str(src / "trusted")
        print(f"data: {len(train.shard_list(data))} shards, {train.count_samples(train.shard_list(data))} pairs")
        print(f"{'scale':10s} {'model':14s} {'samples':>8s} {'wall s':>7s} {'samples/s':>9s}")
        ours = {}
        for sc in train.load_scales(args.scale):
            out = Path(tmp) / "ours" / sc.name
            t0 = time.perf_counter()
            subprocess.run(
                [thresher, "train", data, "--scale", f"{args.scale}/{sc.name}", "--out", str(out)],
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - t0
            seen = json.loads((out / "train_manifest.json").read_text())["samples_seen"]
            ours[f"{args.scale}/{sc.name}"] = seen / wall
            print(f"{sc.name:10s} {sc.model:14s} {seen:8d} {wall:7.1f} {seen / wall:9.1f}")
        print()
        for spec in compare:
            (sc,) = train.load_scales(spec)
            if spec not in ours:
                out = Path(tmp) / "ours" / sc.name
                t0 = time.perf_counter()
                subprocess.run(
                    [thresher, "train", data, "--scale", spec, "--out", str(out)], check=True, capture_output=True
                )
                ours[spec] = json.loads((out / "train_manifest.json").read_text())["samples_seen"] / (
                    time.perf_counter() - t0
                )
            record = json.loads((Path(tmp) / "ours" / sc.name / "train_manifest.json").read_text())
            seen = record["samples_seen"]
            inputs = {"the same shards": train.shard_list(data)}
            if "resized" in record["data"]:
                inputs["our resized copies"] = record["data"]["resized"]["shards"]
            for what, shards in inputs.items():
                plain_out = Path(tmp) / "plain" / sc.name
                os.makedirs(plain_out, exist_ok=True)
                cmd, _ = train.scale_args(shards, sc, str(plain_out), "run", "fp32")
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-c", PLAIN, str(ROOT / "configs" / "models"), *cmd],
                    check=True,
                    capture_output=True,
                )
                plain = seen / (time.perf_counter() - t0)
                print(
                    f"{spec}: ours {ours[spec]:.1f} samples/s, plain open_clip_train on {what} {plain:.1f} "
                    f"samples/s, ratio {ours[spec] / plain:.3f} (target >= 0.95)"
                )
                shutil.rmtree(plain_out, ignore_errors=True)


if __name__ == "__main__":
    main()
