"""The execution layer: how every stage's work over shards, files or partitions runs.

A stage says what to run on each item (`fn(item, *args)`) and what the item needs (`Resources`); this
module decides how: retries, deadlines, a stall watchdog, progress with an ETA, failure records, and
the choice of executor. datatrove's split is the model: the same steps, run by different executors.

- `RayExecutor` (the default): one Ray task per item, on the local instance `init_ray` starts or on the
  cluster named by `--ray-address` / `RAY_ADDRESS`.
- `LocalExecutor`: in this process (`workers=1`: no Ray, so stages are testable without it), or in a
  pool of forked processes (`workers>1`: `thresher synth`, which needs no cluster).

Select one with `using(executor)` (tests) or `THRESHER_EXECUTOR=local`; stages call `start()` (once, to
connect) and then `run` (per-shard stages: finished items are kept, failures returned), `map`
(fan-outs whose every result is needed: any failure raises) or `embed` (a model pipeline). Stages with
persistent per-item work are objects run by `stage.run_stage` (thresher/exec/stage.py), which writes their
completion markers and per-item stats and skips what an earlier run finished.

Model pipelines (CPU producers feeding model actors: CLIP scoring) run through `embed`, on either executor
(thresher/exec/embed.py: Ray tasks and model actors on Ray, one in-process consumer locally). Ray is imported
only in this layer (here and in embed.py), and in the tests' cluster fixtures.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from thresher.core.errors import InputError, StageError, ThresherError

DEFAULT_STALL_S = 1800.0


def stall_default() -> float | None:
    """Seconds without a finished item before a fan-out is stopped (`THRESHER_STALL_S`; 0 turns it off)."""
    s = float(os.environ.get("THRESHER_STALL_S", DEFAULT_STALL_S))
    return s if s > 0 else None


@dataclass(frozen=True)
class Resources:
    """What one item needs: Ray reserves it per task; the local executor runs items regardless."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None


@dataclass
class Outcome:
    """Results in item order (None where an item failed) and {item: reason} for the failures."""

    items: list
    results: list
    failed: dict[int, str] = field(default_factory=dict)  # by position in `items`
    errors: dict[int, BaseException] = field(default_factory=dict)
    retried: set[int] = field(default_factory=set)  # by position: items with a failed attempt (a killed worker's too)

    @property
    def failures(self) -> dict[Any, str]:
        return {self.items[i]: why for i, why in self.failed.items()}

    def raise_if_failed(self, stage: str) -> None:
        """The end of a per-shard stage: finished shards are kept, the rest named with their reasons."""
        if self.failed:
            raise_failures(stage, self.failures)


def raise_failures(stage: str, failed: dict) -> None:
    if failed:
        listing = "; ".join(f"{_name(s)}: {why}" for s, why in sorted(failed.items())[:10])
        raise StageError(
            f"{stage}: {len(failed)} shard(s) failed ({listing}). Finished shards are kept: "
            f"run the same command again to retry the rest"
        )


def _name(item) -> str:
    return f"shard {item:08d}" if isinstance(item, int) else str(item)


# ---------------------------------------------------------------------------------------------------
# executors: start an item, wait for some, take a result, cancel. The loop in `run` does the rest.


LOST_WORKER_RETRIES = 3  # Ray's default for system failures


class RayExecutor:
    name = "ray"

    def __init__(self):
        import ray

        self._ray = ray
        self._remotes: dict = {}

    def share(self, obj):
        """A handle for a large argument many items read (put once in the object store)."""
        return self._ray.put(obj)

    def cpus(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def gpus(self) -> int:
        return int(self._ray.cluster_resources().get("GPU", 0))

    def start(self, fn, args: tuple, res: Resources, name: str | None = None):
        key = (fn, res, name)
        if key not in self._remotes:
            # An item's own errors are retried by `run` (`retries`); Ray's max_retries covers only a dead
            # worker or node (retry_exceptions stays off), which is never the item's fault: with 0, a node
            # lost during dedup's map failed the command on the test cluster (tests/test_cluster.py)
            opts = dict(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=LOST_WORKER_RETRIES)
            if res.memory_mb:
                opts["memory"] = res.memory_mb * 2**20
            if name:  # the task's name in Ray's dashboard and its worker's process title (ray::NAME)
                opts["name"] = name
            self._remotes[key] = self._ray.remote(fn).options(**opts)
        return self._remotes[key].remote(*args)

    def wait(self, handles: list, timeout: float) -> list:
        return self._ray.wait(handles, num_returns=1, timeout=timeout)[0] if handles else []

    def result(self, handle):
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, BaseException) else err) from None

    def cancel(self, handle) -> None:
        self._ray.cancel(handle, force=True)

    def close(self, handles: list) -> None:
        for h in handles:
            self.cancel(h)

    def stream(self, items: list[dict], pipeline):
        """A model pipeline's outputs as they arrive (thresher/exec/embed.py: tasks and actors)."""
        from thresher.exec.embed import ray_stream

        return ray_stream(items, pipeline)


class _Done:
    """An inline item's outcome, already known when `start` returns."""

    def __init__(self, fn, args):
        try:
            self.value, self.error = fn(*args), None
        except Exception as err:  # noqa: BLE001 - handed to the loop, which retries or records it
            self.value, self.error = None, err


class LocalExecutor:
    """Items in this process (workers=1), or in `workers` forked processes. Deadlines and stalls stop
    the whole fan-out here (a forked worker cannot be cancelled alone; an inline item is interrupted by
    the watchdog), where Ray cancels just the late task."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self._pool = None
        self._ready: queue.Queue = queue.Queue()

    def share(self, obj):
        return obj

    def cpus(self) -> int:
        return self.workers

    def gpus(self) -> int:
        try:
            import torch

            return torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no torch, no GPU
            return 0

    def start(self, fn, args: tuple, res: Resources, name: str | None = None):
        if self.workers == 1:
            return _Done(fn, args)
        if self._pool is None:
            import multiprocessing as mp

            self._pool = mp.get_context("fork").Pool(self.workers)
        handle: list = []
        handle.append(
            self._pool.apply_async(
                fn,
                args,
                callback=lambda _: self._ready.put(id(handle)),
                error_callback=lambda _: self._ready.put(id(handle)),
            )
        )
        return handle

    def wait(self, handles: list, timeout: float) -> list:
        if self.workers == 1:
            return list(handles)
        ready: set = set()
        with contextlib.suppress(queue.Empty):
            ready.add(self._ready.get(timeout=timeout))
            while True:
                ready.add(self._ready.get_nowait())
        return [h for h in handles if id(h) in ready]

    def result(self, handle):
        if self.workers == 1:
            if handle.error is not None:
                raise handle.error
            return handle.value
        return handle[0].get()

    def cancel(self, handle) -> None:
        raise _StopAll()

    def stream(self, items: list[dict], pipeline):
        """A model pipeline's outputs as they arrive, in this process (thresher/exec/embed.py)."""
        from thresher.exec.embed import local_stream

        return local_stream(items, pipeline)

    def close(self, handles: list) -> None:
        if self._pool is not None:
            self._pool.terminate() if handles else self._pool.close()
            self._pool.join()
            self._pool = None


class _StopAll(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# choosing one

_current: contextvars.ContextVar = contextvars.ContextVar("thresher_executor", default=None)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster when an address is given (argument or RAY_ADDRESS), else start a local
    instance of our own.

    Without an address, `ray.init()` does not simply start one: it joins a cluster it finds on the
    machine, through the `ray_current_cluster` file in Ray's temp folder, which `ray start` writes and a
    killed cluster leaves behind (ray/_private/services.py, canonicalize_bootstrap_address). Every
    command then failed with "When connecting to an existing cluster, num_cpus and num_gpus must not be
    provided", live cluster or stale file alike (issue 15). `address="local"` always starts our own."""
    import ray

    from thresher.core.netsafety import no_third_party_traffic

    if ray.is_initialized():
        return
    no_third_party_traffic()  # a local instance's processes inherit it
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Quiet by default: Ray's own banner and per-worker log forwarding drown our progress lines.
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address and address != "local":
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
        _start_reaper()


_reaper = None  # the reaper, with the driver's end of its pipe: held, never written, while this process lives


def _start_reaper() -> None:
    """Start thresher/exec/reaper.py once per process (Linux: it reads /proc): Ray ties its GCS and raylet to
    the driver, not the raylet's agents, which outlived a `kill -9` of a command by 60-73 s (issue 25)."""
    import subprocess
    import sys

    global _reaper
    if _reaper is not None or not os.path.isdir("/proc/self"):
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")  # by path: no imports of ours
    _reaper = subprocess.Popen([sys.executable, "-I", script], stdin=subprocess.PIPE, close_fds=True)


def _chosen():
    """The executor `using` set, or a local one under THRESHER_EXECUTOR=local; else None (Ray)."""
    ex = _current.get()
    if ex is not None:
        return ex
    return LocalExecutor() if os.environ.get("THRESHER_EXECUTOR", "ray") == "local" else None


_ray_executors: dict = {}  # (node, job) -> its executor: a stage's fan-outs share registered remote functions


def _ray_executor() -> RayExecutor:
    import ray

    ctx = ray.get_runtime_context()
    key = (ctx.get_node_id(), ctx.get_job_id())  # a new Ray instance (after a shutdown) gets a new one
    if key not in _ray_executors:
        _ray_executors.clear()
        _ray_executors[key] = RayExecutor()
    return _ray_executors[key]


def start(ray_address: str | None = None, meanwhile: Callable[[], Any] | None = None):
    """The executor this stage runs on: the one `using` set, else a local one when
    THRESHER_EXECUTOR=local, else Ray (started or connected here).

    `meanwhile`: the stage's own work that needs no executor (CLIP scoring imports open_clip for its model's
    preprocessing), run in a thread while Ray starts, which mostly waits on Ray's own processes; it returns
    once both are done, raising `meanwhile`'s error. Where no Ray is started it simply runs first."""
    ex = _chosen()
    if ex is None:
        import ray  # before the thread: the two then import no module at the same time but a few leaves

        if ray.is_initialized() or meanwhile is None:
            init_ray(ray_address)
        else:
            with _alongside(meanwhile):
                init_ray(ray_address)
            meanwhile = None
        ex = _ray_executor()
    if meanwhile is not None:
        meanwhile()
    return ex


@contextlib.contextmanager
def _alongside(fn: Callable[[], Any]):
    """Run `fn` in a thread while the block runs; wait for it at the end and raise its error."""
    import threading

    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
            raised.append(err)

    thread = threading.Thread(target=run, name="thresher-meanwhile", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if raised:
        raise raised[0]


def current():
    """The executor in use, without starting Ray if nothing chose one yet (then a local one)."""
    import sys

    ex = _chosen()
    if ex is not None:
        return ex
    ray = sys.modules.get("ray")
    return _ray_executor() if ray is not None and ray.is_initialized() else LocalExecutor()


@contextlib.contextmanager
def using(executor):
    token = _current.set(executor)
    try:
        yield executor
    finally:
        _current.reset(token)


# ---------------------------------------------------------------------------------------------------
# the loop


def run(
    fn: Callable,
    items: Iterable,
    *args,
    label: str,
    resources: Resources = Resources(),
    retries: int = 0,
    deadline_s: Callable[[Any], float] | float | None = None,
    stall_s: float | None | str = "default",
    max_inflight: int | None = None,
    weight: Callable[[Any], int] | None = None,
    unit: str = "items",
    describe: Callable[[Any], str] | None = None,
    on_result: Callable[[Any, Any], None] | None = None,
    keep_results: bool = True,
    quiet: bool = False,
    executor=None,
    task_name: str | None = None,
    log=print,
) -> Outcome:
    """Run `fn(item, *args)` for every item; return an Outcome (nothing raises for a failed item).

    An item that raises, or runs past its deadline, is retried up to `retries` times (never for an
    InputError: bad input stays bad). If no item finishes for `stall_s` seconds while some run, the
    rest are cancelled and StageError names the stall: a hung stage reports instead of spinning
    (issue 15). Progress counts `weight(item)` units (default 1 each) and prints an ETA; `quiet` keeps
    a short fan-out silent unless it runs past one progress period."""
    from thresher.exec.progress import Progress

    ex = executor or current()
    items = list(items)
    stall = stall_default() if stall_s == "default" else stall_s
    limit = deadline_s if callable(deadline_s) else (lambda _item, d=deadline_s: d)
    weigh = weight or (lambda _item: 1)
    if stall is not None and deadline_s is not None and items:  # a deadline already stops a hung item
        stall = max(stall, max(limit(i) or 0 for i in items))
    progress = Progress(label, sum(weigh(i) for i in items), unit=unit, quiet_start=quiet)
    out = Outcome(items, [None] * len(items))
    # a bounded number in flight, so a million shards are not a million queued tasks at once
    cap = max_inflight or max(8, 4 * ex.cpus())
    pending, attempts, inflight = list(range(len(items))), [0] * len(items), {}
    last_event, done = time.monotonic(), 0

    def retry_or_fail(i: int, err: BaseException | None, why: str) -> None:
        out.retried.add(i)
        if attempts[i] <= retries and not isinstance(err, _NoRetry):
            log(f"[{label}] {_name(items[i])} attempt {attempts[i]} failed ({why}); retrying")
            pending.append(i)
        else:
            if retries:
                log(f"[{label}] {_name(items[i])} failed {attempts[i]} times ({why}); giving up for this run")
            out.failed[i] = why
            if err is not None:
                out.errors[i] = err

    try:
        while pending or inflight:
            while pending and len(inflight) < cap:
                i = pending.pop(0)
                attempts[i] += 1
                h = _start(ex, fn, items[i], args, resources, stall, task_name)
                inflight[_key(h)] = (h, i, time.monotonic())
            for h in ex.wait([h for h, _, _ in inflight.values()], timeout=1.0):
                _, i, _ = inflight.pop(_key(h))
                last_event = time.monotonic()
                try:
                    value = ex.result(h)
                except Exception as err:  # noqa: BLE001 - any item failure is retried, then recorded
                    # bad input stays bad: retrying an InputError only repeats its message
                    retry_or_fail(i, _NoRetry(err) if isinstance(err, InputError) else err, _reason(err))
                    continue
                out.results[i], done = (value if keep_results else None), done + 1
                if on_result:
                    on_result(items[i], value)
                extra = f"{done}/{len(items)} done" + (f", {describe(value)}" if describe else "")
                progress.update(weigh(items[i]), extra=extra.rstrip(", "))
            now = time.monotonic()
            for key, (h, i, started) in list(inflight.items()):
                if limit(items[i]) is not None and now - started > limit(items[i]):
                    ex.cancel(h)
                    inflight.pop(key)
                    last_event = now
                    retry_or_fail(i, None, f"over the {limit(items[i]):.0f}s deadline")
            if stall is not None and inflight and now - last_event > stall:
                raise StageError(
                    f"{label}: no item finished for {stall:.0f}s ({len(inflight)} running: "
                    f"{', '.join(_name(items[i]) for _, i, _ in list(inflight.values())[:5])}); "
                    f"stopped instead of waiting forever (THRESHER_STALL_S sets the limit). "
                    f"Finished items are kept: run the same command again"
                )
    except _StopAll:
        raise StageError(
            f"{label}: an item ran past its deadline; the local executor stops the whole run "
            f"(Ray cancels only that task). Finished items are kept: run the command again"
        ) from None
    finally:
        ex.close([h for h, _, _ in inflight.values()])
    progress.close()
    return out


def map(fn: Callable, items: Iterable, *args, label: str = "tasks", quiet: bool = True, **kw) -> list:
    """`run` for fan-outs whose every result is needed: results in item order; a failure raises (an
    InputError or StageError from an item as itself, so its message reaches the user unchanged)."""
    out = run(fn, items, *args, label=label, quiet=quiet, **kw)
    _raise_first(out, label)
    return out.results


def fold(fn: Callable, items: Iterable, *args, add: Callable, start, label: str = "tasks", quiet: bool = True, **kw):
    """`map` whose results are added up as they arrive (`add(total, result)`, from `start`): the driver
    holds the running total, never one result per item (a histogram per shard is 512 KB: at 10,000
    shards that list alone was 5 GB). A failure raises as `map`'s does."""
    total = [start]

    def take(_item, value):
        total[0] = add(total[0], value)

    out = run(fn, items, *args, label=label, quiet=quiet, on_result=take, keep_results=False, **kw)
    _raise_first(out, label)
    return total[0]


def _raise_first(out: Outcome, label: str) -> None:
    if out.failed:
        i = min(out.failed)
        err = out.errors.get(i)
        err = err.err if isinstance(err, _NoRetry) else err
        if isinstance(err, ThresherError):
            raise type(err)(str(err)) from None
        raise StageError(
            f"{label}: {_name(out.items[i])} failed: {out.failed[i]}"
            + (f" (and {len(out.failed) - 1} more)" if len(out.failed) > 1 else "")
        )


def embed(
    items: Iterable[dict],
    pipeline,
    *,
    label: str,
    total: int,
    weight: Callable[[dict], int] | None = None,
    unit: str = "rows",
    describe: Callable[[], str] | None = None,
    stall_s: float | None | str = "default",
    executor=None,
):
    """Run a model pipeline (`embed.Pipeline`: a producer of batches from each item on CPU workers, a
    consumer class in model actors) and yield the consumer's outputs as they arrive. Progress counts
    `weight(output)` of `total` units; if no output arrives for `stall_s` seconds, StageError names the
    stall (a wedged actor would otherwise leave the driver waiting forever). A producer or consumer that
    raises stops the run: per-item failures are the producer's to record."""
    from thresher.core.runtime import watchdog
    from thresher.exec.progress import Progress

    ex = executor or current()
    stall = stall_default() if stall_s == "default" else stall_s
    progress = Progress(label, total, unit=unit)
    weigh = weight or (lambda _out: 1)
    with watchdog(lambda: progress.done, stall, label) if stall else contextlib.nullcontext():
        for out in ex.stream(list(items), pipeline):
            progress.update(weigh(out), extra=describe() if describe else "")
            yield out
    progress.close()


class _NoRetry(Exception):
    def __init__(self, err: BaseException):
        super().__init__(str(err))
        self.err = err


def _start(ex, fn, item, args, res, stall, name=None):
    """Start one item; an inline one runs now, under the watchdog (it can only interrupt the main thread)."""
    import threading

    if (
        isinstance(ex, LocalExecutor)
        and ex.workers == 1
        and stall is not None
        and threading.current_thread() is threading.main_thread()
    ):
        from thresher.core.runtime import watchdog

        with watchdog(
            lambda: None, stall, f"{getattr(fn, '__name__', 'task')}({_name(item)})", poll_s=min(5.0, stall / 4)
        ):
            return ex.start(fn, (item, *args), res, name)
    return ex.start(fn, (item, *args), res, name)


def _key(handle):
    return id(handle) if isinstance(handle, (_Done, list)) else handle


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[-1] if lines else type(err).__name__)[:300]
