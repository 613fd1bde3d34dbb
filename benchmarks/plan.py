"""How far `thresher run JOB --plan` is from the job's measured wall time, step by step (issue 26, point 5).

    python benchmarks/plan.py --job demo [--dir DIR]       # `thresher demo --out DIR`, then the comparison
    python benchmarks/plan.py --job ab_test [--dir DIR]    # `thresher run ab_test --out DIR`, then the same

Runs the job as a user would (a cold command; a DIR whose job finished already is only read: its step
records keep the seconds of the run that did them), loads the same job with the same variables, asks the
planner for each step's wall time on this machine (thresher/app/plan.py, configs/throughputs.yaml) and
prints planned against measured seconds (OUT/_job/NN-COMMAND.json) per step. A step is "within" when
the plan is within 30% of the measured time, or within 3 s of it: a step of a second or two is mostly
the command's own start, which the planner leaves out. Exit status 1 when a step is not within.
"""

from __future__ import annotations

import sys  # noqa: I001 - first: the path fix below must precede every other import
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not benchmarks/ (select.py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

RELATIVE, ABSOLUTE_S = 0.30, 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(job: str, out: Path, port: int | None = None) -> dict:
    """Run the job unless `out` holds its finished run; the job's variables."""
    thresher = str(Path(sys.executable).with_name("thresher"))
    if job == "demo":
        record = out / "demo.json"
        port = json.loads(record.read_text())["port"] if record.exists() else port or free_port()
        subprocess.run([thresher, "demo", "--out", str(out), "--port", str(port)], check=True)
        return json.loads(record.read_text())
    synth = out / "source" / "synth.json"  # a kept directory resumes: the same port, so the same steps
    port = json.loads(synth.read_text())["config"]["port"] if synth.exists() else port or free_port()
    subprocess.run([thresher, "run", job, "--out", str(out), "--var", f"port={port}"], check=True)
    return {"port": port}


def compare(job_name: str, out: Path, variables: dict) -> list[dict]:
    from thresher.app import jobs
    from thresher.app.plan import plan_job

    job = jobs.load(job_name, variables, out=str(out))
    p = plan_job(job)
    rows = []
    for e in p["steps"]:
        record = out / "_job" / f"{e.step:02d}-{e.command}.json"
        measured = json.loads(record.read_text())["seconds"]
        planned = e.wall_s(p["cluster"])
        ok = abs(planned - measured) <= max(RELATIVE * measured, ABSOLUTE_S)
        rows.append(
            {
                "step": e.step,
                "command": e.command,
                "what": e.what,
                "planned": planned,
                "measured": measured,
                "within": ok,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=["demo", "ab_test"], required=True)
    ap.add_argument("--dir", default=None, help="job directory to use and keep (a finished one is only read)")
    ap.add_argument("--port", type=int, default=None, help="the pool's HTTP port (it is in every URL, so in the uids)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.dir).resolve() if args.dir else Path(tmp) / "job"
        t0 = time.perf_counter()
        variables = run_job(args.job, out, args.port)
        wall = time.perf_counter() - t0
        rows = compare(args.job, out, variables)
    load = os.getloadavg()[0]
    print(f"\njob {args.job} on {os.cpu_count()} cores (load {load:.1f} after it); this command {wall:.0f} s")
    print(f"{'step':>4s} {'command':10s} {'planned s':>10s} {'measured s':>11s} {'ratio':>6s}  within  what")
    for r in rows:
        ratio = r["planned"] / r["measured"] if r["measured"] else float("inf")
        print(
            f"{r['step']:4d} {r['command']:10s} {r['planned']:10.1f} {r['measured']:11.1f} {ratio:6.2f}  "
            f"{'yes' if r['within'] else 'NO':6s}  {r['what']}"
        )
    planned, measured = sum(r["planned"] for r in rows), sum(r["measured"] for r in rows)
    print(f"total: planned {planned:.0f} s, measured {measured:.0f} s (ratio {planned / measured:.2f})")
    off = [r for r in rows if not r["within"]]
    print(f"{len(rows) - len(off)} of {len(rows)} steps within 30% (or 3 s) of the measured time")
    sys.exit(1 if off else 0)


if __name__ == "__main__":
    main()
