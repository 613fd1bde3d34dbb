"""Model pipelines on the execution layer: produce batches from items on CPU workers, consume them in model
actors (GPUs when there are), outputs back to the driver as they arrive. CLIP scoring is the user
(thresher/stages/features/clip.py); `execute.embed` runs a `Pipeline` on the chosen executor, under the
layer's stall watchdog and progress.

- Ray (`RayExecutor.stream`): Ray tasks and actors. Producer tasks (one item each, `decode_cpus` and
  `decode_memory_mb` reserved, as many at once as the CPUs the actors leave hold) stream their batches,
  one object each; the driver hands them, `batch_size // produce_rows` to a call, to `actors` consumer
  actors (`actor_cpus`, `actor_gpus` each), the actor with the fewest calls in hand first, and takes no
  more from the producers while every actor has two; a producer that gets ahead pauses. A call holds
  nothing after it returns, so an actor lost with its node is started again and its calls re-sent with
  the same batches (Ray rebuilds a lost batch by re-running its producer): no row is lost, and none is
  returned twice, but a call can run twice, so a consumer that writes must take the same batch twice
  harmlessly (thresher/stages/features/clip.py's parts, named by their rows' keys). On a cluster too
  small for the actors and one producer, they share the CPUs there are.
- Local (`LocalExecutor.stream`): producer and consumer in this process, one consumer built once; no Ray.

The caller takes the outputs as they come: while it holds on to one, producers that got ahead pause, so a
Ray task it starts and waits for there may wait for a CPU they hold (CLIP scoring joins finished shards in
its own process for that reason).

The Ray path was a Ray Data pipeline until 2026-12-07 (issue 26, point 2). On this project's 2-core
machines Ray Data was most of what CLIP scoring lost to a plain loop: its import in the driver and the
workers, three helper actors each in a worker process of its own, and its executor cost a four-item
pipeline with no model 11-12 CPU-seconds and 7-8 s to its first output after Ray had started, against 5
and 0.6-1.2 s with these tasks and an actor; and it gathered what a producer yielded into blocks of up to
128 MiB, so the model waited for a whole shard of small images to be decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Pipeline:
    """`produce(batch, **produce_kwargs)` takes one item as a batch of one row ({column: array of 1}) and
    yields batches ({column: array}); `consume(**consume_kwargs)` is a class whose instances take a batch of
    `batch_size` rows (the last may be smaller) and return a batch of outputs. `produce_rows`: the most
    rows a produced batch has (on Ray a consumer's call takes `batch_size // produce_rows` of them, so its
    batches have at most `batch_size` rows). `threads_arg` names the consumer's constructor argument that
    receives the whole CPUs it holds (at least 1); on Ray, a consumer with a `set_threads(n)` method is
    given the CPUs the producers held once no producer is left (a CPU model's last batches run on all).
    Locally, a consumer's `close()`, if it has one, is called at the end (it shares the command's process)."""

    produce: Callable
    consume: type
    produce_kwargs: dict = field(default_factory=dict)
    consume_kwargs: dict = field(default_factory=dict)
    batch_size: int = 256
    produce_rows: int = 256
    actors: int = 1
    actor_cpus: float = 1.0
    actor_gpus: float = 0
    decode_cpus: float = 1.0
    decode_memory_mb: int | None = None
    threads_arg: str | None = None

    def consumer_kwargs(self, cpus: float) -> dict:
        extra = {self.threads_arg: max(1, int(cpus))} if self.threads_arg else {}
        return {**self.consume_kwargs, **extra}


def fit(p: Pipeline, cpus: float) -> tuple[float, float]:
    """(CPUs per actor, CPUs per producer) on a cluster of `cpus`: a cluster too small for the actors and
    one producer (one CPU in all) shares what there is, instead of the producer waiting forever for the CPU
    the actors hold."""
    actor_cpus, decode_cpus = p.actor_cpus, p.decode_cpus
    if actor_cpus * p.actors + decode_cpus > cpus:
        actor_cpus = decode_cpus = max(cpus / (p.actors + 1), 0.1)
    return actor_cpus, decode_cpus


# Ray path: calls in hand per actor (one running, one whose input is being fetched); produced batches the
# driver takes ahead of the actors (references only: the batches stay where they were made), per actor, so
# that decoding runs on while a model actor starts; and batches a producer may hold that the driver has not
# taken yet (then it pauses)
IN_HAND = 2
TAKEN = 8
AHEAD = 2
# per consumer actor; its calls are re-sent until it is back or dead for good: while a lost node is not yet
# declared dead the calls fail at once as "temporarily unavailable", which used up a count of 2 in the
# cluster test (Ray Data's own default is to retry without limit)
RESTARTS = 2


def ray_stream(items: list[dict], p: Pipeline) -> Iterator[dict]:
    """Producer tasks stream batches to consumer actors; outputs in the order they finish."""
    import ray

    if not items:
        return
    cpus = float(ray.cluster_resources().get("CPU", 1))
    actor_cpus, decode_cpus = fit(p, cpus)
    opts = dict(memory=p.decode_memory_mb * 2**20) if p.decode_memory_mb else {}
    produce = ray.remote(_produce_item).options(
        num_cpus=decode_cpus, num_returns="streaming", _generator_backpressure_num_objects=AHEAD, **opts
    )
    # an actor whose process dies (a lost node) is started again and the calls it had in hand re-sent,
    # their batches rebuilt by Ray where they were lost with the node: a call keeps nothing once it returns
    consumer = ray.remote(_Consumer).options(
        num_cpus=actor_cpus, num_gpus=p.actor_gpus, max_restarts=RESTARTS, max_task_retries=-1
    )
    actors = [consumer.remote(p.consume, p.consumer_kwargs(actor_cpus)) for _ in range(p.actors)]
    producers = max(1, int((cpus - actor_cpus * p.actors) / decode_cpus + 1e-9))
    per_call = max(1, p.batch_size // max(1, p.produce_rows))
    todo = list(reversed(items))
    running: list = []  # producer tasks' generators
    taken: list = []  # produced batches taken from a producer, not yet handed to an actor
    in_hand: list[list] = [[] for _ in actors]  # per actor: its calls not yet returned
    try:
        while todo or running or taken or any(in_hand):
            while todo and len(running) < producers:
                running.append(produce.remote(p.produce, todo.pop(), p.produce_kwargs))
            while taken:
                i = min(range(len(actors)), key=lambda i: len(in_hand[i]))
                # a call short of `per_call` batches goes only to an idle actor or when no more will come
                if len(in_hand[i]) >= IN_HAND or (len(taken) < per_call and in_hand[i] and running):
                    break
                group, taken = taken[:per_call], taken[per_call:]
                # once no producer is left, the actors take the CPUs the producers held (a CPU model's tail)
                threads = None if todo or running else int(actor_cpus + decode_cpus * producers / len(actors))
                in_hand[i].append(actors[i].feed.remote(*group, threads=threads))
            waiting = [ref for calls in in_hand for ref in calls]
            if len(taken) < TAKEN * len(actors):  # room to take more: wait on the producers too
                waiting += running
            # fetch_local=False: a produced batch goes from its producer to an actor, never to the driver
            ready = ray.wait(waiting, num_returns=1, fetch_local=False)[0][0]
            if isinstance(ready, ray.ObjectRefGenerator):
                try:
                    taken.append(next(ready))
                except StopIteration:
                    running.remove(ready)
                continue
            for calls in in_hand:
                if ready in calls:
                    calls.remove(ready)
            out = ray.get(ready)
            if out:
                yield out
    finally:
        for actor in actors:
            ray.kill(actor)
        for task in running:
            ray.cancel(task, force=True)


def _produce_item(produce: Callable, item: dict, kwargs: dict) -> Iterator[dict]:
    """A producer task: one item, as a batch of one row, through `produce`."""
    yield from produce({c: np.array([v]) for c, v in item.items()}, **kwargs)


class _Consumer:
    """A consumer actor: the pipeline's consumer, built once; each call joins the batches it is given into
    one and returns that batch's outputs, keeping nothing (so a call re-sent to a restarted actor gives the
    same outputs). An error building it is raised by the first call, where the driver gets it as itself (an
    actor whose constructor raised is dead, and its calls name only the message)."""

    def __init__(self, consume: type, kwargs: dict):
        try:
            self.consumer, self.error = consume(**kwargs), None
        except Exception as err:  # noqa: BLE001 - raised by the first call
            self.consumer, self.error = None, err

    def feed(self, *batches: dict, threads: int | None = None) -> dict:
        if self.error is not None:
            raise self.error
        if threads and hasattr(self.consumer, "set_threads"):
            self.consumer.set_threads(min(threads, os.cpu_count() or 1))
        batches = tuple(b for b in batches if _rows(b))
        if not batches:
            return {}
        return self.consumer(_concat(batches))


class Rebatcher:
    """Batches of any size in, batches of `size` rows out; `flush` gives what is left (fewer rows). The local
    path's: in one process nothing held can be lost with a node."""

    def __init__(self, size: int):
        self.size = size
        self.held: list[dict] = []  # batches not yet given out
        self.rows = 0

    def add(self, batch: dict) -> list[dict]:
        if not _rows(batch):
            return []
        self.held.append({c: np.asarray(v) for c, v in batch.items()})
        self.rows += _rows(batch)
        out = []
        while self.rows >= self.size:
            out.append(self._take(self.size))
        return out

    def flush(self) -> list[dict]:
        return [self._take(self.rows)] if self.rows else []

    def _take(self, n: int) -> dict:
        parts, got = [], 0
        while got < n:
            b = self.held[0]
            size = _rows(b)
            if got + size <= n:
                parts.append(self.held.pop(0))
                got += size
            else:
                k = n - got
                parts.append({c: v[:k] for c, v in b.items()})
                self.held[0] = {c: v[k:] for c, v in b.items()}
                got = n
        self.rows -= n
        return _concat(parts)


# in this process the consumer is the command itself: it uses every core (an actor's `actor_cpus` is its
# share of a cluster; in-process, a 1-thread model would leave the other cores idle)
LOCAL_CPUS = float(os.cpu_count() or 1)


def local_stream(items: list[dict], p: Pipeline) -> Iterator[dict]:
    """In this process: each item's batches, re-batched to `batch_size` rows, through one consumer."""
    consumer = None
    batches = Rebatcher(p.batch_size)

    def consume(batch: dict) -> dict:
        nonlocal consumer
        if consumer is None:
            consumer = p.consume(**p.consumer_kwargs(LOCAL_CPUS))
        return consumer(batch)

    try:
        for item in items:
            for batch in p.produce({c: np.array([v]) for c, v in item.items()}, **p.produce_kwargs):
                for full in batches.add(batch):
                    yield consume(full)
        for rest in batches.flush():
            yield consume(rest)
    finally:
        # a consumer may change this process's state (torch's threads): its close() puts it back
        if consumer is not None and hasattr(consumer, "close"):
            consumer.close()


def _concat(batches) -> dict:
    """Batches with the same columns as one (the one itself when there is one)."""
    if len(batches) == 1:
        return batches[0]
    return {c: np.concatenate([np.asarray(b[c]) for b in batches]) for c in batches[0]}


def _rows(batch: dict) -> int:
    return len(next(iter(batch.values()))) if batch else 0
