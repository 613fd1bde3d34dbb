"""The execution layer (thresher/exec/execute.py): the same loop on the local and the Ray executor, retries,
deadlines, failure records, and the stall watchdog every long stage runs under (issue 15, finding 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thresher.core.errors import InputError, StageError
from thresher.exec import execute

ROOT = Path(__file__).resolve().parent.parent


def square(x, offset=0):
    return x * x + offset


def flaky(x, marks: str):
    """Fails the first time it sees each item (a marker file remembers), then succeeds."""
    mark = Path(marks) / str(x)
    if not mark.exists():
        mark.write_text("1")
        raise OSError(f"transient failure of {x}")
    return x


def bad_input(x):
    raise InputError(f"row {x} of urls.parquet: no url")


def sleepy(x, seconds):
    time.sleep(seconds if x == 0 else 0)
    return x


def slow_first_time(x, marks: str, seconds: float):
    mark = Path(marks) / str(x)
    if not mark.exists():
        mark.write_text("1")
        time.sleep(seconds)
    return x


def dies_first_time(x, marks: str):
    """The worker process dies (as on a lost node, or the OOM killer's SIGKILL) on an item's first attempt."""
    mark = Path(marks) / str(x)
    if not mark.exists():
        mark.write_text("1")
        os._exit(1)
    return x


@pytest.fixture(params=["inline", "forked"])
def local(request):
    return execute.LocalExecutor(workers=1 if request.param == "inline" else 2)


def test_local_results_come_in_item_order_and_retries_recover(local, tmp_path):
    assert execute.map(square, [3, 1, 2], 1, executor=local) == [10, 2, 5]
    out = execute.run(flaky, [1, 2, 3], str(tmp_path), label="t", retries=1, executor=local, log=lambda *_: None)
    assert out.results == [1, 2, 3] and not out.failed


def test_fold_adds_results_as_they_arrive_and_keeps_none(local):
    seen = []
    out = execute.run(
        square, [3, 1, 2], 1, label="t", executor=local, keep_results=False, on_result=lambda i, v: seen.append(v)
    )
    assert out.results == [None, None, None] and sorted(seen) == [2, 5, 10]  # the driver held no list of them
    assert execute.fold(square, [3, 1, 2], 1, add=lambda a, b: a + b, start=0, executor=local) == 17
    with pytest.raises(InputError, match="no url"):
        execute.fold(bad_input, [1], add=lambda a, b: a, start=0, executor=local)


def test_a_failure_is_recorded_with_its_reason_and_the_rest_finish(local, tmp_path):
    out = execute.run(flaky, [1, 2], str(tmp_path), label="t", retries=0, executor=local, log=lambda *_: None)
    assert out.results == [None, None] and set(out.failures) == {1, 2}
    assert "transient failure of 1" in out.failures[1]
    with pytest.raises(StageError, match="2 shard.*shard 00000001: transient failure of 1"):
        out.raise_if_failed("t")


def test_bad_input_is_not_retried_and_reaches_the_user_as_itself(local):
    logged = []
    with pytest.raises(InputError, match="row 7 of urls.parquet: no url"):
        execute.map(bad_input, [7], executor=local, retries=3, log=logged.append)
    assert not any("retrying" in line for line in logged)


def test_an_inline_item_past_the_stall_limit_is_stopped():
    started = time.monotonic()
    with pytest.raises(StageError, match="no progress for 1s"):
        execute.run(sleepy, [0], 30, label="t", stall_s=1, executor=execute.LocalExecutor())
    assert time.monotonic() - started < 10


def test_a_forked_item_past_its_deadline_stops_the_run():
    started = time.monotonic()
    with pytest.raises(StageError, match="past its deadline"):
        execute.run(sleepy, [0, 1], 30, label="t", deadline_s=1, executor=execute.LocalExecutor(workers=2))
    assert time.monotonic() - started < 10


def test_using_sets_the_executor_stages_get():
    with execute.using(execute.LocalExecutor()) as ex:
        assert execute.current() is ex and execute.start() is ex


@pytest.mark.usefixtures("ray_by_value")
class TestRay:
    def test_results_retries_and_shared_arguments(self, tmp_path):
        ex = execute.current()
        assert isinstance(ex, execute.RayExecutor)
        assert execute.map(square, [3, 1, 2], ex.share(1)) == [10, 2, 5]
        out = execute.run(flaky, [1, 2], str(tmp_path), label="t", retries=1, log=lambda *_: None)
        assert out.results == [1, 2]

    def test_bad_input_from_a_task_keeps_its_class_and_message(self):
        with pytest.raises(InputError, match="row 7 of urls.parquet"):
            execute.map(bad_input, [7], retries=2)

    def test_a_task_past_its_deadline_is_cancelled_and_retried(self, tmp_path):
        started = time.monotonic()
        out = execute.run(
            slow_first_time, [1], str(tmp_path), 60, label="t", deadline_s=2, retries=1, log=lambda *_: None
        )
        assert out.results == [1] and time.monotonic() - started < 30

    def test_a_task_whose_worker_dies_runs_again_without_retries(self, tmp_path):
        """A dead worker or node is not the item's fault: its task runs again even where an item's own errors
        are not retried (dedup's fan-outs: a node lost during its map failed the command on the test cluster)."""
        assert execute.map(dies_first_time, [1, 2], str(tmp_path)) == [1, 2]

    def test_a_hung_task_is_reported_as_a_stall_not_waited_on_forever(self):
        started = time.monotonic()
        # shard 1 returns at once, unless a loaded machine starts its worker more than 2 s late: then both
        # are still running when the limit is reached, and the message names both
        stall = r"t: no item finished for 2s \((1 running: shard 00000000|2 running: shard 00000000, shard 00000001)\)"
        with pytest.raises(StageError, match=stall):
            execute.run(sleepy, [0, 1], 600, label="t", stall_s=2)
        assert time.monotonic() - started < 20


def _fifo_in_place_of(path: Path) -> None:
    """A named pipe nobody writes: whatever opens it for reading blocks forever (a hung mount, a wedged
    reader), which is how a stage hangs without spinning."""
    path.unlink()
    os.mkfifo(path)


def _thresher(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "thresher.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_filter_and_scoring_report_a_stall_instead_of_hanging(featured_pool, tmp_path):
    """Finding 4's second half: a stage whose reader blocks for good ends with a message naming the
    stall, within the limit, for a Ray task fan-out (filter) and for the model pipeline (CLIP scoring).
    A limit of 4 s, not 5: the model pipeline's watchdog looks every 5 s, so 5 s of no progress is only
    seen 10 s in, 4 s at the first look, 5 s in."""
    pool = tmp_path / "pool"
    shutil.copytree(featured_pool, pool, ignore=shutil.ignore_patterns("decisions", "stats", "dedup"))
    _fifo_in_place_of(pool / "features" / "base" / "00000001.parquet")
    recipe = ROOT / "configs" / "recipes" / "datacomp-basic.yaml"
    started = time.monotonic()
    r = _thresher("filter", str(pool), "--recipe", str(recipe), env={"THRESHER_STALL_S": "4"})
    assert r.returncode != 0 and "no item finished for 4s" in r.stderr, r.stderr[-2000:]
    assert "00000001" in r.stderr.split("no item finished", 1)[1].split(")", 1)[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and time.monotonic() - started < 120

    shutil.rmtree(pool / "features" / "clip_tiny")
    _fifo_in_place_of(pool / "shards" / "00000002.tar")
    r = _thresher(
        "features",
        str(pool),
        "--model",
        "thresher-tiny",
        "--pretrained",
        "none",
        "--scorer-id",
        "clip_tiny",
        "--no-base",
        env={"THRESHER_STALL_S": "4"},
    )
    assert r.returncode != 0 and "no progress for 4s" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_a_stage_runs_without_ray_on_the_local_executor(featured_pool, tmp_path):
    """Stages say what to run, not how: the filter stage, end to end, in one process with no Ray."""
    pool = tmp_path / "pool"
    shutil.copytree(featured_pool, pool, ignore=shutil.ignore_patterns("decisions", "stats", "dedup"))
    code = (
        "import sys; from thresher.stages.filter import filter as f; "
        f"m = f.run({str(pool)!r}, {str(ROOT / 'configs/recipes/datacomp-basic.yaml')!r}, log=lambda *_: None); "
        "print(m['kept'], m['samples'], 'ray' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "THRESHER_EXECUTOR": "local"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    kept, samples, ray_imported = r.stdout.split()
    assert 0 < int(kept) < int(samples) and ray_imported == "False"
