"""Issue 25, uid files: one uid rule wherever uids enter (finding 1), one writer per uid file, its folder
made before any work and no sort folder left by a killed run (finding 2), and a malformed uid file named
in one line instead of read (finding 11, its uid-file part). Tiny hand-made pools, no Ray."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filter import decisions, make_pool, write_recipe

from thresher.algo import hashes
from thresher.audit import audit
from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.acquire import ingest
from thresher.stages.filter import filter as flt
from thresher.stages.subset import subset

QUIET = {"log": lambda *_: None}
UID_RULE_WORDS = "not 32 hex digits"


@pytest.fixture(autouse=True)
def _local(monkeypatch):
    monkeypatch.setenv("THRESHER_EXECUTOR", "local")  # in this process: no Ray


def _uid(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def _pool(root, uids: list[str], per_shard: int = 200):
    return make_pool(root, [[{"uid": u} for u in uids[i : i + per_shard]] for i in range(0, len(uids), per_shard)])


def _keep_all(tmp_path, name="all"):
    return write_recipe(tmp_path, f"name: {name}\nsteps:\n  - {{filter: none}}\n")


def _uid_list_recipe(tmp_path, path):
    p = tmp_path / "listed.yaml"
    p.write_text(f"name: listed\nsteps:\n  - {{filter: uid_list, params: {{path: {path}}}}}\n")
    return str(p)


def _url_list(tmp_path, uids: list[str]) -> str:
    path = tmp_path / "urls.parquet"
    n = len(uids)
    pq.write_table(
        pa.table({"uid": uids, "url": [f"http://example.com/{i}.jpg" for i in range(n)], "text": ["a cat"] * n}), path
    )
    return str(path)


# ---------------------------------------------------------------------------------------------------
# Finding 1: one uid rule, everywhere uids enter


def test_upper_case_uids_enter_a_pool_in_lower_case(tmp_path):
    """A URL list's upper-case uids become the canonical lower case, so the pool's text and a uid file's
    numbers agree; the same uid in two cases is one uid, repeated."""
    upper = [_uid(i).upper() for i in range(400)]
    result = ingest.ingest(_url_list(tmp_path, upper), str(tmp_path / "work"), per_shard=1000)
    shard = ingest.read_shard_input(f"{result.directory}/00000000.arrow")
    assert shard.column("uid").to_pylist() == [u.lower() for u in upper]
    twice = [_uid(1).upper(), _uid(2), _uid(1)]
    with pytest.raises(InputError, match="same uid"):
        ingest.ingest(_url_list(tmp_path, twice), str(tmp_path / "work2"), per_shard=1000)


@pytest.mark.parametrize(
    "bad",
    [
        "0x" + _uid(7)[2:],  # int(u, 16) read it as a 30-digit number: another uid
        _uid(7)[:31] + " ",  # a trailing space: another uid, maybe another sample's
        _uid(7)[:8] + "_" + _uid(7)[9:],
        _uid(7)[:31],
        _uid(7) + "0",
        "",
    ],
)
def test_a_uid_that_is_not_32_hex_digits_is_refused_at_ingest(tmp_path, bad):
    uids = [_uid(1), _uid(2), bad, _uid(4)]
    with pytest.raises(InputError) as err:
        ingest.ingest(_url_list(tmp_path, uids), str(tmp_path / "work"), per_shard=1000)
    message = str(err.value)
    assert "urls.parquet" in message and "row 3" in message and "field 'uid'" in message
    assert repr(bad) in message and UID_RULE_WORDS in message and "\n" not in message


def test_an_upper_case_pool_round_trips_through_a_uid_file(tmp_path):
    """The issue's case: a pool with upper-case uids (one made before the rule), written with
    --uids-only and read back by a uid_list recipe, kept 0 of 400 and exited 0. Now all 400."""
    upper = [_uid(i).upper() for i in range(400)]
    pool = _pool(tmp_path / "pool", upper)
    out = tmp_path / "all.npy"
    record = subset.write_uid_file(str(pool), _keep_all(tmp_path), str(out), **QUIET)
    assert record["samples"] == 400
    assert hashes.uids_of(np.load(out)) == sorted(u.lower() for u in upper)
    flt.run(str(pool), _uid_list_recipe(tmp_path, out), **QUIET)
    assert sum(r["keep"] for r in decisions(pool, "listed").values()) == 400


def test_a_pool_uid_no_uid_file_can_hold_is_named_not_renumbered(tmp_path):
    """A uid with a trailing space used to be read as a 31-digit number: another uid, in the file and in
    every later use of it. Now --uids-only and uid_list name the file, row and value."""
    uids = [_uid(i) for i in range(5)]
    uids[3] = uids[3][:31] + " "
    pool = _pool(tmp_path / "pool", uids)
    with pytest.raises(InputError) as err:
        subset.write_uid_file(str(pool), _keep_all(tmp_path), str(tmp_path / "x.npy"), **QUIET)
    message = str(err.value)
    assert "00000000.parquet" in message and "row 4" in message and repr(uids[3]) in message
    assert not (tmp_path / "x.npy").exists()
    good = tmp_path / "good.npy"
    np.save(good, hashes.uid_array(uids[:3]))
    with pytest.raises(InputError, match=rf"uid_list .*good.npy.*row 4.*{UID_RULE_WORDS}"):
        flt.run(str(pool), _uid_list_recipe(tmp_path, good), **QUIET)


def test_audit_explain_and_trace_read_a_uid_by_the_same_rule(tmp_path):
    uids = [_uid(i) for i in range(3)]
    pool = _pool(tmp_path / "pool", uids)
    assert audit.explain(str(pool), uids[1].upper())["uid"] == uids[1]
    for bad in ("0x" + uids[1][2:], f" {uids[1]}", uids[1][:-1]):
        with pytest.raises(InputError, match=rf"audit explain UID: uid .* {UID_RULE_WORDS}"):
            audit.explain(str(pool), bad)
        with pytest.raises(InputError, match=rf"audit trace UID: uid .* {UID_RULE_WORDS}"):
            audit.trace(str(tmp_path / "no-subset"), bad)  # refused before the subset is read


# ---------------------------------------------------------------------------------------------------
# Finding 2: one writer per uid file, its folder first, no leftovers from a killed run

# A --uids-only run in another process that stops inside its sort (its work folder made) until `go` exists.
HOLDER = r"""
import os, sys, time
os.environ["THRESHER_EXECUTOR"] = "local"
from thresher.stages.subset import subset, uids
pool, recipe, out, started, go, size = sys.argv[1:7]
original = uids._uids_map
def held(*args, **kwargs):
    open(started, "w").close()
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.05)
    return original(*args, **kwargs)
uids._uids_map = held
subset.write_uid_file(pool, recipe, out, size=int(size), log=lambda *_: None)
"""


def _holder(tmp_path, pool, recipe, out, size):
    started, go = tmp_path / "started", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(pool), recipe, str(out), str(started), str(go), str(size)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while not started.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the holder never reached its sort"
        time.sleep(0.05)
    return proc, go


def test_a_second_writer_of_the_same_uid_file_is_refused(tmp_path):
    """Two runs to one file both reported success, the file holding whichever finished last."""
    pool = _pool(tmp_path / "pool", [_uid(i) for i in range(20)])
    recipe, out = _keep_all(tmp_path), tmp_path / "uids.npy"
    proc, go = _holder(tmp_path, pool, recipe, out, size=2)
    try:
        with pytest.raises(InputError, match=r"uids.npy: this uid file is being written by another run"):
            subset.write_uid_file(str(pool), recipe, str(out), size=3, **QUIET)
    finally:
        go.touch()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert len(np.load(out)) == 2 and runtime.read_json(f"{out}.json")["samples"] == 2
    assert sorted(p.name for p in tmp_path.glob("uids.npy*")) == ["uids.npy", "uids.npy.json"]  # no lock left


def test_a_killed_run_leaves_no_sort_folder_after_the_next_run(tmp_path):
    pool = _pool(tmp_path / "pool", [_uid(i) for i in range(20)])
    recipe, out = _keep_all(tmp_path), tmp_path / "uids.npy"
    proc, _ = _holder(tmp_path, pool, recipe, out, size=2)
    proc.kill()
    proc.communicate(timeout=30)
    work = tmp_path / "pool" / "_work" / "uids"
    assert len(list(work.iterdir())) == 1  # what the killed run left
    record = subset.write_uid_file(str(pool), recipe, str(out), size=2, **QUIET)  # its lock went with it
    assert record["samples"] == 2
    assert list(work.iterdir()) == []
    assert not (tmp_path / "uids.npy.lock").exists()


def test_a_live_runs_sort_folder_is_kept(tmp_path):
    pool = _pool(tmp_path / "pool", [_uid(i) for i in range(20)])
    recipe = _keep_all(tmp_path)
    proc, go = _holder(tmp_path, pool, recipe, tmp_path / "a.npy", size=2)
    try:
        subset.write_uid_file(str(pool), recipe, str(tmp_path / "b.npy"), size=3, **QUIET)
        assert len(list((tmp_path / "pool" / "_work" / "uids").iterdir())) == 1  # the live one's
    finally:
        go.touch()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert len(np.load(tmp_path / "a.npy")) == 2 and len(np.load(tmp_path / "b.npy")) == 3


def test_the_uid_files_folder_is_made_before_any_work(tmp_path):
    """A run into a missing folder did all its work, then failed on its temporary file."""
    pool = _pool(tmp_path / "pool", [_uid(i) for i in range(10)])
    out = tmp_path / "new" / "deeper" / "uids.npy"
    assert subset.write_uid_file(str(pool), _keep_all(tmp_path), str(out), **QUIET)["samples"] == 10
    assert len(np.load(out)) == 10
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match=r"a-file/uids.npy: cannot make its folder"):
        subset.write_uid_file(str(pool), _keep_all(tmp_path, "other"), str(tmp_path / "a-file" / "uids.npy"), **QUIET)
    assert not runtime.exists(Pool(str(pool)).decisions_manifest("other"))  # refused before the filter ran


# ---------------------------------------------------------------------------------------------------
# Finding 11 (uid files): a malformed file is named in one line, from its header, before any row is read


def _header_only(path, shape, extra: bytes = b""):
    """A .npy header claiming `shape` of u8,u8, followed by `extra` bytes (not the rows it claims)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(hashes.UID_DTYPE), "fortran_order": False, "shape": shape}
        )
        f.write(extra)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("scalar.npy", lambda p: np.save(p, hashes.uid_array([_uid(1)]).reshape(())), r"shape \(\), not one row"),
        ("square.npy", lambda p: np.save(p, np.stack([hashes.uid_array([_uid(1), _uid(2)])] * 2)), r"shape \(2, 2\)"),
        ("absurd.npy", lambda p: _header_only(p, (10**12,), b"\0" * 32), r"header says 1000000000000 uids"),
        ("truncated.npy", lambda p: _header_only(p, (3,), b"\0" * 40), r"header says 3 uids .* 40 bytes"),
        ("empty.npy", lambda p: p.write_bytes(b""), r"not a \.npy file"),
    ],
)
def test_a_uid_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path, name, make, message):
    pool = _pool(tmp_path / "pool", [_uid(1), _uid(2)])
    make(tmp_path / name)
    with pytest.raises(InputError) as err:
        flt.run(str(pool), _uid_list_recipe(tmp_path, tmp_path / name), **QUIET)
    text = str(err.value)
    assert f"uid_list: {tmp_path / name}" in text and "\n" not in text
    assert re.search(message, text), text
