"""Model pipelines on the execution layer: produce batches from items on CPU workers, consume them in model
actors (GPUs when there are), outputs back to the driver as they arrive. CLIP scoring is the user
(thresher/stages/features/clip.py); `execute.embed` runs a `Pipeline` on the chosen executor, under the
layer's stall watchdog and progress.

- Ray (`RayExecutor.stream`): a Ray Data pipeline. Producer tasks (one item each, `decode_cpus` and
  `decode_memory_mb` reserved) feed an actor pool of `actors` consumers (`actor_cpus`, `actor_gpus` each),
  re-batched to `batch_size` rows. On a cluster too small for the actors and one producer, they share the
  CPUs there are. A lost node's producer tasks and actor tasks are run again (Ray Data restarts a lost
  actor and retries its tasks by default), so a batch can reach the consumer twice: a consumer that writes
  must take the same batch twice harmlessly (thresher/stages/features/clip.py's parts).
- Local (`LocalExecutor.stream`): producer and consumer in this process, one consumer built once; no Ray.
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
    `batch_size` rows (the last may be smaller) and return a batch of outputs. `threads_arg` names the
    consumer's constructor argument that receives the whole CPUs it holds (at least 1)."""

    produce: Callable
    consume: type
    produce_kwargs: dict = field(default_factory=dict)
    consume_kwargs: dict = field(default_factory=dict)
    batch_size: int = 256
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


def ray_stream(items: list[dict], p: Pipeline) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy

    actor_cpus, decode_cpus = fit(p, float(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # producers run in their own CPU tasks ahead of the model; their memory reservation also keeps Ray
    # Data from fusing them into the model actors, where they would stall the model
    opts = dict(memory=p.decode_memory_mb * 2**20) if p.decode_memory_mb else {}
    ds = ds.map_batches(p.produce, batch_size=1, num_cpus=decode_cpus, fn_kwargs=p.produce_kwargs, **opts)
    ds = ds.map_batches(
        p.consume,
        batch_size=p.batch_size,
        compute=ActorPoolStrategy(size=p.actors),
        num_gpus=p.actor_gpus,
        num_cpus=actor_cpus,
        fn_constructor_kwargs=p.consumer_kwargs(actor_cpus),
    )  # a lost actor is restarted and its tasks re-run: Ray Data's defaults (max_restarts, max_task_retries -1)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


# in this process the consumer is the command itself: it uses every core (an actor's `actor_cpus` is its
# share of a cluster; in-process, a 1-thread model would leave the other cores idle)
LOCAL_CPUS = float(os.cpu_count() or 1)


def local_stream(items: list[dict], p: Pipeline) -> Iterator[dict]:
    """In this process: each item's batches, re-batched to `batch_size` rows, through one consumer."""
    consumer = None
    held: list[dict] = []  # produced batches not yet consumed
    rows = 0

    def take(n: int) -> dict:
        nonlocal rows
        parts, got = [], 0
        while got < n:
            b = held[0]
            size = _rows(b)
            if got + size <= n:
                parts.append(held.pop(0))
                got += size
            else:
                k = n - got
                parts.append({c: v[:k] for c, v in b.items()})
                held[0] = {c: v[k:] for c, v in b.items()}
                got = n
        rows -= n
        return parts[0] if len(parts) == 1 else {c: np.concatenate([b[c] for b in parts]) for c in parts[0]}

    for item in items:
        for batch in p.produce({c: np.array([v]) for c, v in item.items()}, **p.produce_kwargs):
            if not _rows(batch):
                continue
            held.append({c: np.asarray(v) for c, v in batch.items()})
            rows += _rows(batch)
            while rows >= p.batch_size:
                if consumer is None:
                    consumer = p.consume(**p.consumer_kwargs(LOCAL_CPUS))
                yield consumer(take(p.batch_size))
    if rows:
        if consumer is None:
            consumer = p.consume(**p.consumer_kwargs(LOCAL_CPUS))
        yield consumer(take(rows))


def _rows(batch: dict) -> int:
    return len(next(iter(batch.values()))) if batch else 0
