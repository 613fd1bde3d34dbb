"""The shell examples in the docs run, so they cannot drift from the code.

Convention: a fenced code block whose info string is `bash test` is executed; a plain `bash` block is
shown only (use it for slow examples: the demo, GPUs, clusters, placeholders such as POOL).

    ```bash test
    thresher filter pool --recipe datacomp-basic
    ```

Every markdown file under docs/, and README.md, with at least one such block is one test. Its blocks run
in order, each as `bash -euo pipefail -c BLOCK`, in one fresh working directory per file, so a later
block can read what an earlier one wrote (files carry over; shell variables do not). The directory holds:

    ./pool    the session's small featured pool (tests/conftest.py: 3,000 synthetic samples downloaded,
              base features and the random-init `clip_tiny` scorer), copied fresh for each file; its
              tar shards are symlinks to the shared ones, so never write into pool/shards/*.tar
    ./synth   the synthetic source it came from (urls.parquet, ground_truth.parquet, blocklists/, eval/,
              trusted/), a symlink to the shared one: read it, write elsewhere

The environment has REPO (the repository root), the venv's bin first on PATH (so `thresher` and `python`
are this checkout's), and no RAY_ADDRESS: each command starts its own local Ray, as it would for a user;
except in the files IN_PROCESS names, whose point is what their commands do and print, not where they
run: there THRESHER_EXECUTOR=local runs each command's work in its own process, without the seconds a
local Ray takes to start (most of such a file's time). Every stage these run is tested on Ray elsewhere.
The pool's HTTP server is up for the whole session. A failing block fails its file's test with the file,
the block's line number, the block and the end of its output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
BLOCK_TIMEOUT_S = 600
# Not here: docs whose point needs Ray (plugins.md: a local Ray's workers inherit PYTHONPATH; reproducibility.md:
# the same bytes whatever order Ray's tasks finish in), and README.md, a user's first commands.
IN_PROCESS = {
    "docs/datacomp.md",
    "docs/getting-started.md",
    "docs/workflow-audit.md",
    "docs/workflow-build-subset.md",
}
OUTPUT_TAIL = 6000


def bash_test_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each `bash test` block, in order."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent, info = m.group("fence"), len(m.group("indent")), m.group("info").split()
        body, j = [], i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if (
                close
                and close.group("fence")[0] == fence[0]
                and len(close.group("fence")) >= len(fence)
                and not close.group("info").strip()
            ):
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if info[:2] == ["bash", "test"]:
            blocks.append((i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def markdown_files() -> list[Path]:
    files = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    return [p for p in files if bash_test_blocks(p)]


def _copy_pool(src: Path, dst: Path) -> None:
    """What the featured_pool fixture made (download manifest, shards and yield report, base features,
    clip_tiny), not what other tests have added to it since (dedup, decisions, more scorers)."""
    dst.mkdir()
    (dst / "stats").mkdir()
    shutil.copy2(src / "stats" / "download-yield.json", dst / "stats" / "download-yield.json")
    for name in ("manifest.json", "_work"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).exists():
            shutil.copy2(src / name, dst / name)
    (dst / "shards").mkdir()
    for f in sorted((src / "shards").iterdir()):
        if f.suffix == ".tar":  # no stage rewrites a finished tar; the copies would be most of the bytes
            (dst / "shards" / f.name).symlink_to(f)
        else:
            shutil.copy2(f, dst / "shards" / f.name)
    for kind in ("base", "clip_tiny"):
        shutil.copytree(src / "features" / kind, dst / "features" / kind)


def run_blocks(doc: Path, work: Path) -> str | None:
    """Run a file's `bash test` blocks in order in `work`; None, or the report of the first that fails."""
    env = {
        **os.environ,
        "REPO": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("THRESHER_EXECUTOR", None)
    rel = doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc
    if str(rel) in IN_PROCESS:
        env["THRESHER_EXECUTOR"] = "local"
    for line, code in bash_test_blocks(doc):
        try:
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                cwd=work,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=BLOCK_TIMEOUT_S,
            )
            failed, out = run.returncode != 0 and f"exited with {run.returncode}", run.stdout
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            failed = f"was killed after {BLOCK_TIMEOUT_S} s"
        if failed:
            return (
                f"{rel}:{line}: the `bash test` block {failed} (working directory {work})\n"
                f"--- block ---\n{code}--- output (last {OUTPUT_TAIL} characters) ---\n{out[-OUTPUT_TAIL:]}"
            )
    return None


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_examples_run(doc: Path, featured_pool, synth_dir, server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _copy_pool(Path(featured_pool), work / "pool")
    (work / "synth").symlink_to(synth_dir)
    failure = run_blocks(doc, work)
    if failure:
        pytest.fail(failure, pytrace=False)
