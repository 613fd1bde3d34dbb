"""Model pipelines on the execution layer (thresher/exec/embed.py, `execute.embed`): the local executor runs
producer and consumer in this process without Ray; CLIP scoring under THRESHER_EXECUTOR=local imports no
Ray and gives the Ray path's scores (issue 26, point 2). On Ray, producer tasks stream batches to consumer
actors that re-batch them, without Ray Data, and a producer's or consumer's error reaches the driver as
itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.core.errors import InputError
from thresher.exec import execute
from thresher.exec.embed import Pipeline, fit


def _produce(batch, rows_per_item: int, chunk: int):
    item = int(batch["item"][0])
    for start in range(0, rows_per_item, chunk):
        n = min(chunk, rows_per_item - start)
        yield {"item": np.full(n, item, np.int64), "x": np.arange(start, start + n, dtype=np.float32)}


class _Sum:
    built = 0

    def __init__(self, scale: float, threads: int):
        type(self).built += 1
        self.scale, self.threads = scale, threads

    def __call__(self, batch):
        return {"rows": np.array([len(batch["x"])]), "sum": np.array([batch["x"].sum() * self.scale])}


def _pipeline(consume=None, rows_per_item=10, chunk=4, scale=2.0, **kw) -> Pipeline:
    """The tests' pipeline: _produce's items of `rows_per_item` rows in chunks of `chunk`, into `consume`."""
    return Pipeline(
        produce=_produce,
        consume=consume or _Sum,
        produce_kwargs=dict(rows_per_item=rows_per_item, chunk=chunk),
        consume_kwargs=dict(scale=scale, **kw.pop("consume_kwargs", {})),
        threads_arg="threads",
        **kw,
    )


def test_local_pipeline_rebatches_through_one_consumer_without_ray():
    _Sum.built = 0
    p = _pipeline(batch_size=7, actor_cpus=2.0)
    with execute.using(execute.LocalExecutor()):
        outs = list(
            execute.embed(
                [{"item": i} for i in range(3)], p, label="t", total=30, weight=lambda o: int(o["rows"].sum())
            )
        )
    assert [int(o["rows"][0]) for o in outs] == [7, 7, 7, 7, 2]
    assert sum(float(o["sum"][0]) for o in outs) == 2.0 * 3 * sum(range(10))
    assert _Sum.built == 1


class _DiesOnce(_Sum):
    def __init__(self, scale: float, threads: int, flag: str):
        super().__init__(scale, threads)
        self.flag, self.calls = flag, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return super().__call__(batch)


class _NoModel:
    def __init__(self, threads: int):
        raise InputError("checkpoint /x.pt is not an open_clip checkpoint")


def _produce_then_fail(batch):
    yield {"item": np.zeros(3, np.int64), "x": np.ones(3, np.float32)}
    raise ValueError("shard 00000007: truncated tar")


@pytest.mark.usefixtures("ray_by_value")
class TestRay:
    def test_producers_stream_to_an_actor_in_calls_of_batch_size_rows(self):
        p = _pipeline(batch_size=8, produce_rows=4)
        ex = execute.current()
        assert isinstance(ex, execute.RayExecutor)
        outs = list(
            execute.embed(
                [{"item": i} for i in range(3)], p, label="t", total=30, weight=lambda o: int(o["rows"].sum())
            )
        )
        rows = [int(o["rows"][0]) for o in outs]
        # each call takes two produced batches (4, 4 or 2 rows), or one where no second is coming
        assert sum(rows) == 30 and max(rows) <= 8 and len(outs) >= 30 // 8
        assert sum(float(o["sum"][0]) for o in outs) == 2.0 * 3 * sum(range(10))

    def test_two_actors_share_the_batches(self):
        p = _pipeline(rows_per_item=20, chunk=5, scale=1.0, batch_size=5, produce_rows=5, actors=2)
        outs = list(execute.embed([{"item": i} for i in range(4)], p, label="t", total=80))
        assert sorted(int(o["rows"][0]) for o in outs) == [5] * 16
        assert sum(float(o["sum"][0]) for o in outs) == 4 * sum(range(20))

    def test_an_actor_that_dies_is_restarted_and_no_row_is_lost_or_doubled(self, tmp_path):
        # the actor's process exits in its second call (as it would with its node): Ray starts it again and
        # re-sends the calls it had in hand, which hold everything they need
        died = dict(flag=str(tmp_path / "died"))
        p = _pipeline(_DiesOnce, chunk=5, scale=1.0, consume_kwargs=died, batch_size=10, produce_rows=5)
        outs = list(execute.embed([{"item": i} for i in range(4)], p, label="t", total=40))
        assert (tmp_path / "died").exists()
        assert sum(int(o["rows"][0]) for o in outs) == 40
        assert sum(float(o["sum"][0]) for o in outs) == 4 * sum(range(10))

    def test_a_consumer_that_cannot_be_built_raises_its_own_error(self):
        p = Pipeline(
            produce=_produce, consume=_NoModel, produce_kwargs=dict(rows_per_item=4, chunk=4), threads_arg="threads"
        )
        with pytest.raises(InputError, match="not an open_clip checkpoint"):
            list(execute.embed([{"item": 0}], p, label="t", total=4))

    def test_a_producer_that_raises_stops_the_run(self):
        p = Pipeline(produce=_produce_then_fail, consume=_Sum, consume_kwargs=dict(scale=1.0), threads_arg="threads")
        with pytest.raises(ValueError, match="truncated tar"):
            list(execute.embed([{"item": 0}], p, label="t", total=3))


def test_a_small_cluster_shares_its_cpus_between_actors_and_a_producer():
    p = Pipeline(produce=_produce, consume=_Sum, actors=2, actor_cpus=1.0)
    assert fit(p, 16.0) == (1.0, 1.0)
    assert fit(p, 2.0) == (2 / 3, 2 / 3)


def test_local_clip_scoring_imports_no_ray_and_matches_the_ray_scores(featured_pool, tmp_path):
    small = tmp_path / "pool"
    (small / "shards").mkdir(parents=True)
    for s in (0, 1):
        for f in (featured_pool / "shards").glob(f"{s:08d}*"):
            shutil.copy(f, small / "shards" / f.name)
    code = textwrap.dedent(
        f"""
        import sys
        from thresher.stages.features import features
        features.run_scorer({str(small)!r}, features.ScorerConfig(scorer_id="local"), log=lambda *_: None)
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
        """
    )
    env = {**os.environ, "THRESHER_EXECUTOR": "local", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for s in (0, 1):
        ray_t = pq.read_table(featured_pool / "features" / "clip_tiny" / f"{s:08d}.parquet")
        local_t = pq.read_table(small / "features" / "local" / f"{s:08d}.parquet")
        assert local_t.column("uid").to_pylist() == ray_t.column("uid").to_pylist()
        assert local_t.column("error").to_pylist() == ray_t.column("error").to_pylist()
        a = np.array(ray_t.column("clip_score").to_pylist(), dtype=np.float64)
        b = np.array(local_t.column("clip_score").to_pylist(), dtype=np.float64)
        np.testing.assert_allclose(b, a, atol=2e-3, equal_nan=True)  # float16 embeddings either way
        assert (small / "features" / "local" / f"{s:08d}_stats.json").exists()


class _Closing(_Sum):
    closed = 0

    def close(self):
        type(self).closed += 1


def test_the_local_pipeline_closes_its_consumer_once_at_the_end():
    """In this process the consumer shares the command's state; its close() is how it puts it back."""
    _Closing.closed = 0
    p = _pipeline(_Closing, rows_per_item=5, chunk=5, scale=1.0)
    with execute.using(execute.LocalExecutor()):
        outs = list(execute.embed([{"item": 0}, {"item": 1}], p, label="t", total=10))
    assert sum(int(o["rows"][0]) for o in outs) == 10 and _Closing.closed == 1


def test_the_clip_model_puts_torch_threads_back_when_closed(tmp_path):
    """A CPU model takes the cores it holds; on the local executor that is the command's own process, where
    a later step (a DFN's training) must find torch's threads as they were."""
    import torch

    from thresher.core import models
    from thresher.core.config import to_dict
    from thresher.stages.features.clip import ClipEmbedder, ScorerConfig

    before = torch.get_num_threads()
    odd = before + 3  # not what the model sets (its cores), so a model that left its own is seen
    torch.set_num_threads(odd)
    try:
        cfg = ScorerConfig(model="thresher-tiny", pretrained=None, scorer_id="t")  # random init
        pp = models.preprocess_config(cfg.model, cfg.pretrained)
        model = ClipEmbedder(to_dict(cfg), str(tmp_path), pp, "cpu", threads=1)
        assert torch.get_num_threads() == 1
        model.close()
        assert torch.get_num_threads() == odd
    finally:
        torch.set_num_threads(before)
