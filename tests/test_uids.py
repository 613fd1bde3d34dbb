"""DataComp's uid files (issue 17, deliverable 4, first half): the format both ways, and the `uid_list`
filter that keeps exactly the uids of such a file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_filter import decisions, make_pool, write_recipe

from thresher.algo import hashes
from thresher.core.errors import InputError
from thresher.stages.filter import filter as flt


def _uid(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def _datacomp_file(path, uids) -> None:
    """What DataComp's baseline scripts write, built by hand with NumPy and nothing of ours."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    np.save(path, np.sort(arr))


def test_round_trip_sorted_unique_and_as_datacomp_writes_it(tmp_path):
    uids = [_uid(i) for i in range(500)] + [_uid(3)]  # a repeat: one row in the file
    arr = hashes.uid_array(uids)
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == 500
    assert hashes.uids_of(arr) == sorted(set(uids))  # 32 hex digits sort as their 128-bit numbers
    _datacomp_file(tmp_path / "theirs.npy", uids[:500])  # their pools hold each uid once
    assert np.array_equal(np.load(tmp_path / "theirs.npy"), arr)
    assert hashes.check_uid_array(arr, "x") is arr
    with pytest.raises(ValueError, match="not 32 hex digits"):
        hashes.uid_array(["not-a-uid"])


def test_uid_list_keeps_exactly_the_uids_of_a_datacomp_file(tmp_path):
    rows = [[{"uid": _uid(10 * s + i)} for i in range(10)] for s in range(3)]
    pool = make_pool(tmp_path / "pool", rows)
    listed = [_uid(i) for i in (0, 5, 11, 29)] + [_uid(999)]  # one uid the pool does not hold
    _datacomp_file(tmp_path / "keep.npy", listed)
    recipe = write_recipe(
        tmp_path, f"name: mine\nsteps:\n  - {{filter: uid_list, params: {{path: {tmp_path}/keep.npy}}}}\n"
    )
    flt.run(str(pool), recipe, log=lambda *_: None)
    kept = {u for u, r in decisions(pool, "mine").items() if r["keep"]}
    assert kept == set(listed[:4])


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("ints.npy", lambda p: np.save(p, np.arange(4, dtype=np.int64)), "dtype int64, not DataComp's u8,u8"),
        ("unsorted.npy", lambda p: np.save(p, hashes.uid_array([_uid(1), _uid(2)])[::-1]), "not sorted"),
        ("pickled.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "uid_list: .*pickled.npy"),
        ("text.npy", lambda p: p.write_text("uid\n"), "uid_list: .*text.npy"),
    ],
)
def test_a_malformed_uid_file_is_named_with_what_is_wrong(tmp_path, name, make, message):
    pool = make_pool(tmp_path / "pool", [[{"uid": _uid(1)}]])
    make(tmp_path / name)
    recipe = write_recipe(
        tmp_path, f"name: bad\nsteps:\n  - {{filter: uid_list, params: {{path: {tmp_path}/{name}}}}}\n"
    )
    with pytest.raises(InputError, match=message):
        flt.run(str(pool), recipe, log=lambda *_: None)


def test_a_uid_list_that_is_not_npy_is_refused_when_the_recipe_loads(tmp_path):
    (tmp_path / "uids.txt").write_text("x\n")
    recipe = write_recipe(
        tmp_path, f"name: bad\nsteps:\n  - {{filter: uid_list, params: {{path: {tmp_path}/uids.txt}}}}\n"
    )
    with pytest.raises(InputError, match=r"uid_list: path .*uids.txt.* is not a \.npy file"):
        flt.load_recipe(recipe)
