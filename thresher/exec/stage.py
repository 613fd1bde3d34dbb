"""Stages as small objects, and the executor's side of them: setup once per worker, completion markers,
per-item stats, resume.

A stage that does persistent work per item (a shard to download, score or write) is a `Stage`: it names
itself, says what one item needs (`resources`, overridable by name from the file THRESHER_RESOURCES
names), prepares once per worker process (`setup`), does one item and returns that item's stats
(`process`), and says where the item's completion marker lives (`marker`). NeMo Curator's
ProcessingStage is the model; datatrove's executors, which own completion markers and stats, the other.

`run_stage` (this module) is the one loop for such stages: it skips the items whose markers are all
there (a re-run resumes), runs the rest through `execute.run` (retries, deadlines, the stall watchdog,
progress, failure records), and in the worker, after `process` returns, writes the item's stats, with
its start and end times, to its marker, last: a killed item leaves no marker and is redone, never half
counted. Stages no longer write their own markers.

Fan-outs inside a stage whose results the driver needs at once (histograms, a map/reduce round) stay
`execute.map` / `execute.fold` over plain functions: nothing of them persists, so nothing resumes.

    THRESHER_RESOURCES=resources.yaml   # {stage name: {cpus: 2, gpus: 1, memory_mb: 4000}}
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections import OrderedDict
from typing import Any, ClassVar

from thresher.core import runtime
from thresher.core.config import from_dict, read_yaml
from thresher.core.errors import InputError
from thresher.exec import execute
from thresher.exec.execute import Outcome, Resources


class Stage:
    """One stage's per-item work. Subclasses are dataclasses holding what every item shares (the pool,
    the config as a dict); they set `name` and override `process` and, for resumable work, `marker`."""

    name: ClassVar[str] = "stage"
    unit: ClassVar[str] = "items"
    resources: ClassVar[Resources] = Resources()
    # the executor adds start_time and end_time to the stats it writes; False where the stats are data
    # another file copies (subset's shard entries go into its manifest)
    timed: ClassVar[bool] = True

    def setup(self) -> None:
        """Once per worker process, before its first item (load a model or a list)."""

    def process(self, item) -> dict:
        """Do one item; return its stats (JSON), which the executor writes to `marker(item)`."""
        raise NotImplementedError

    def marker(self, item) -> str | None:
        """Where the executor records `item` done; None: the item is not resumable."""
        return None

    def markers(self, item, stats: dict) -> dict[str, dict]:
        """{path: stats} to write once `item` is done: one marker per item unless a stage's item covers
        several (import-metadata: one input file, several pool shards)."""
        path = self.marker(item)
        return {path: stats} if path else {}

    def done(self, item) -> bool:
        """Finished by an earlier run: its marker is there."""
        path = self.marker(item)
        return path is not None and runtime.exists(path)

    def finish(self, item) -> None:
        """After the markers are written: remove the item's scratch (kept until then, so a retry of a
        failed marker write still finds it)."""

    def weight(self, item) -> int:
        """Progress units of one item (samples, rows)."""
        return 1

    def deadline_s(self, item) -> float | None:
        return None

    def describe(self, stats: dict) -> str:
        """Progress line's tail after an item (e.g. its failures)."""
        return ""


def run_stage(
    stage: Stage,
    items,
    *,
    label: str | None = None,
    retries: int = 0,
    max_inflight: int | None = None,
    quiet: bool = False,
    executor=None,
    log=print,
    **run_kw: Any,
) -> Outcome:
    """Run `stage` over the items not done yet (see the module docstring); an Outcome over those."""
    items = list(items)
    todo = [i for i in items if not stage.done(i)]
    label = label or stage.name
    if len(todo) < len(items) and not quiet:
        log(f"[{label}] resuming: {len(items) - len(todo)} of {len(items)} {stage.unit} already complete")
    token = uuid.uuid4().hex  # which workers have set this run's stage up
    shared = (executor or execute.current()).share(stage)  # sent once (Ray's object store), not per item
    outcome = execute.run(
        _process,
        todo,
        shared,
        token,
        label=label,
        resources=resources_for(stage),
        retries=retries,
        deadline_s=stage.deadline_s,
        max_inflight=max_inflight,
        weight=stage.weight,
        unit=stage.unit,
        describe=stage.describe,
        quiet=quiet,
        executor=executor,
        task_name=stage.name,
        log=log,
        **run_kw,
    )
    # a worker killed between writing a file and renaming it (a lost node, a killed command) leaves its
    # temporary beside the outputs: swept from a folder the first time this process runs a stage there (an
    # earlier run's), and again where an item of this run had a failed attempt; not on every call (CLIP
    # scoring runs one per finished shard, and a listing of a big folder each time would cost more than the
    # join). This run's tasks have ended and no other run writes there (output locks)
    hit = [outcome.items[i] for i in outcome.retried]
    dirs = {os.path.dirname(m) for m in map(stage.marker, todo) if m}
    again = {os.path.dirname(m) for m in map(stage.marker, hit) if m}
    for directory in sorted((dirs - _swept) | again):
        runtime.remove_temporaries(directory)
    _swept.update(dirs)
    return outcome


_swept: set[str] = set()  # folders whose leftover temporaries this process removed once

# the stages this worker process has set up, by run: a worker serves one run's items many times over
_ready: OrderedDict[str, Stage] = OrderedDict()


def _process(item, stage: Stage, token: str) -> dict:
    """One item in a worker: set the stage up (once per process and run), process, write the markers."""
    if token not in _ready:
        stage.setup()
        _ready[token] = stage
        while len(_ready) > 4:  # earlier runs' stages, whose models would otherwise stay loaded
            _ready.popitem(last=False)
    ready = _ready[token]
    started = time.time()
    stats = ready.process(item)
    if stage.timed:
        stats = {**stats, "start_time": started, "end_time": time.time()}
    for path, one in ready.markers(item, stats).items():
        runtime.write_json(path, one)  # last: the item's outputs are all in place
    ready.finish(item)
    return stats


def resources_for(stage: Stage) -> Resources:
    """The stage's resources, or those the THRESHER_RESOURCES file gives its name."""
    path = os.environ.get("THRESHER_RESOURCES")
    return _overrides(path).get(stage.name, stage.resources) if path else stage.resources


@functools.cache
def _overrides(path: str) -> dict[str, Resources]:
    data = read_yaml(path, "resources file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of stage name to resources (cpus, gpus, memory_mb)")
    out = {}
    for name, fields in data.items():
        res = from_dict(Resources, fields, where=f"{path}: {name}")
        if res.cpus < 0 or res.gpus < 0 or (res.memory_mb is not None and res.memory_mb <= 0):
            raise InputError(f"{path}: {name}: cpus and gpus must be >= 0 and memory_mb > 0 (got {res})")
        out[str(name)] = res
    return out
