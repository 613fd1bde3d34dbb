"""Stages as objects on the execution layer (thresher/exec/stage.py, issue 26 point 3): the executor sets a
stage up once per worker, writes each item's stats as its completion marker (last, with its times), skips
what an earlier run finished, leaves no marker for a failed item, and takes a stage's resources from the
THRESHER_RESOURCES file by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from thresher.core.errors import InputError
from thresher.exec import execute
from thresher.exec.stage import Stage, resources_for, run_stage


@dataclass
class Squares(Stage):
    out: str
    fail: tuple = ()

    name: ClassVar[str] = "squares"
    unit: ClassVar[str] = "numbers"
    resources: ClassVar[execute.Resources] = execute.Resources(cpus=0.5)

    def setup(self) -> None:
        setups = Path(self.out) / "setups"
        setups.write_text(setups.read_text() + "x" if setups.exists() else "x")
        self.offset = 0  # what a real stage loads here (a model, a list)

    def process(self, item: int) -> dict:
        if item in self.fail:
            raise OSError(f"item {item} failed")
        (Path(self.out) / f"{item}.txt").write_text(str(item * item + self.offset))
        return {"item": item, "square": item * item}

    def marker(self, item: int) -> str:
        return str(Path(self.out) / f"{item}_stats.json")

    def finish(self, item: int) -> None:
        (Path(self.out) / f"{item}.scratch").unlink(missing_ok=True)


@pytest.fixture(params=["inline", "forked"])
def local(request):
    return execute.LocalExecutor(workers=1 if request.param == "inline" else 2)


def test_the_executor_writes_markers_with_times_and_a_rerun_resumes(tmp_path, local):
    for i in range(4):
        (tmp_path / f"{i}.scratch").write_text("")
    stage = Squares(str(tmp_path), fail=(2,))
    out = run_stage(stage, range(4), executor=local, log=lambda *_: None)
    assert out.failures == {2: "item 2 failed"}
    for i in (0, 1, 3):
        stats = json.loads((tmp_path / f"{i}_stats.json").read_text())
        assert stats["item"] == i and stats["square"] == i * i and stats["end_time"] >= stats["start_time"]
        assert not (tmp_path / f"{i}.scratch").exists()  # finish() ran after the marker
    assert not (tmp_path / "2_stats.json").exists() and (tmp_path / "2.scratch").exists()
    # inline: one setup for the whole run; forked: at most one per worker
    assert 1 <= len((tmp_path / "setups").read_text()) <= local.workers

    lines = []
    again = run_stage(Squares(str(tmp_path)), range(4), executor=local, log=lines.append)
    assert again.items == [2] and not again.failed  # only what failed before
    assert any("resuming: 3 of 4 numbers already complete" in ln for ln in lines)
    assert json.loads((tmp_path / "2_stats.json").read_text())["square"] == 4


def test_a_stage_without_markers_is_run_whole_each_time(tmp_path):
    @dataclass
    class NoMarks(Squares):
        def marker(self, item):
            return None

    run_stage(NoMarks(str(tmp_path)), [1, 2], executor=execute.LocalExecutor(), log=lambda *_: None)
    out = run_stage(NoMarks(str(tmp_path)), [1, 2], executor=execute.LocalExecutor(), log=lambda *_: None)
    assert out.items == [1, 2] and not list(tmp_path.glob("*_stats.json"))


def test_resources_come_from_the_stage_or_the_file_thresher_resources_names(tmp_path, monkeypatch):
    stage = Squares(str(tmp_path))
    monkeypatch.delenv("THRESHER_RESOURCES", raising=False)
    assert resources_for(stage) == execute.Resources(cpus=0.5)
    path = tmp_path / "resources.yaml"
    path.write_text("squares: {cpus: 2, gpus: 1, memory_mb: 4000}\nother: {cpus: 3}\n")
    monkeypatch.setenv("THRESHER_RESOURCES", str(path))
    assert resources_for(stage) == execute.Resources(cpus=2.0, gpus=1.0, memory_mb=4000)
    bad = tmp_path / "bad.yaml"
    bad.write_text("squares: {cpu: 2}\n")
    monkeypatch.setenv("THRESHER_RESOURCES", str(bad))
    with pytest.raises(InputError, match=r"bad.yaml.*squares.*cpu"):
        resources_for(stage)
    negative = tmp_path / "negative.yaml"
    negative.write_text("squares: {cpus: -1}\n")
    monkeypatch.setenv("THRESHER_RESOURCES", str(negative))
    with pytest.raises(InputError, match=r"negative.yaml: squares: cpus and gpus must be >= 0"):
        resources_for(stage)


def test_a_rerun_removes_what_a_writer_killed_mid_write_left(tmp_path):
    """A worker killed between writing a file and renaming it (a lost node: tests/test_cluster.py saw
    `00000000_stats.json.5616-19e8348f.tmp` left in a pool) leaves atomic_writer's temporary; the run of
    the stage that writes there removes it once its tasks have ended. Other files ending in .tmp stay."""
    left = tmp_path / "1_stats.json.5616-19e8348f.tmp"
    left.write_text("{")
    (tmp_path / "notes.tmp").write_text("mine")
    out = run_stage(Squares(str(tmp_path)), range(3), executor=execute.LocalExecutor(), log=lambda *_: None)
    assert not out.failures and not left.exists()
    assert (tmp_path / "notes.tmp").read_text() == "mine"
