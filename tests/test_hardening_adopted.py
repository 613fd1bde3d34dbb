"""Issue 25, the pools users bring: import-pool's tars read by one key rule everywhere and img2dataset's
Parquet checked (finding 3), one pixel limit wherever images are decoded (finding 4), adopted tars
fingerprinted at import and checked by every later reader (finding 5), `.npz` arrays checked from their
headers before loading (finding 6), and import's malformed inputs named in one line (finding 11, its
import part). Tiny hand-made img2dataset folders and DataComp files, no Ray."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from thresher.audit import audit
from thresher.core import decode, models, runtime, schema
from thresher.core.errors import InputError
from thresher.core.pool import Pool, member_key
from thresher.stages.acquire import adopt, importing
from thresher.stages.features import features
from thresher.stages.subset import reshard

QUIET = {"log": lambda *_: None}


@pytest.fixture(autouse=True)
def _local(monkeypatch):
    monkeypatch.setenv("THRESHER_EXECUTOR", "local")  # in this process: no Ray


def _jpeg(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _png_bomb(side: int = 13000) -> bytes:
    """A valid grey PNG of side x side pixels (13000: 169 megapixels, under Pillow's own refusal at twice
    its limit), some 170 KB: its rows compress to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = (b"\0" + b"\0" * side) * 1000
    body = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.compress((b"\0" * (side + 1)) * (side % 1000))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body + z.flush()) + chunk(b"IEND", b"")


def _i2d_folder(root, members: dict[str, bytes], rows: list[dict], stats: bytes | None = None):
    """An img2dataset output folder of one shard: 00000.tar (these members, in order), 00000.parquet (these
    rows: key, status and a caption; url made up) and 00000_stats.json."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:  # a directory entry, as `tar -C DIR .` writes "./"
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = {
        "url": [f"http://example.com/{r['key']}.jpg" for r in rows],
        "caption": [r.get("caption", f"a photo {i}") for i, r in enumerate(rows)],
        "key": [r["key"] for r in rows],
        "status": [r.get("status", "success") for r in rows],
        "error_message": [None] * len(rows),
        "width": [40] * len(rows),
        "height": [30] * len(rows),
        "original_width": [40] * len(rows),
        "original_height": [30] * len(rows),
        "sha256": ["0" * 64] * len(rows),
    }
    pq.write_table(pa.table(table), root / "00000.parquet")
    (root / "00000_stats.json").write_bytes(stats if stats is not None else b'{"count": %d}' % len(rows))
    return root


def _adopt(tmp_path, members, rows, name="i2d", **kw):
    folder = _i2d_folder(tmp_path / name, members, rows, **kw)
    out = tmp_path / f"{name}-pool"
    adopt.import_pool(str(folder), str(out), **QUIET)
    return folder, out


def _one_line_input_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


# ---------------------------------------------------------------------------------------------------
# finding 3: one key rule for import-pool, Pool.read_images and the subset index


def test_the_key_rule_drops_dot_slash_and_lower_cases_the_extension():
    assert member_key("./000001.JPG") == ("000001", "jpg")
    assert member_key("000001.json") == ("000001", "json")
    assert member_key("sub/000001.jpg") == ("sub/000001", "jpg")
    assert member_key("photo.v0000.jpg") == ("photo", "v0000.jpg")  # webdataset's rule: the first dot


def test_a_tar_packed_with_dot_slash_and_upper_case_is_read_by_every_stage(tmp_path):
    """`tar -C dir .` members (./KEY.jpg) and .JPG: imported, and then every image found by base features
    and the subset index (features used to report all "missing", and subset to fail)."""
    members = {
        "./": None,
        "./000000000.jpg": _jpeg(),
        "./000000000.txt": b"a photo 0",
        "./000000001.JPG": _jpeg((10, 200, 10)),
        "./000000001.txt": b"a photo 1",
    }
    _, out = _adopt(tmp_path, members, [{"key": "000000000"}, {"key": "000000001"}])
    pool = Pool(out)
    assert sorted(pool.read_images(0)) == ["000000000", "000000001"]
    features.base_features_shard(0, str(out))
    base = pq.read_table(pool.features("base", 0))
    assert base.column("error").null_count == base.num_rows == 2 and base.column("pdq").null_count == 0
    index = reshard._member_index(str(out), 0)
    assert {k: sorted(e for e, _, _ in v) for k, v in index.items()} == {
        "000000000": ["jpg", "txt"],
        "000000001": ["jpg", "txt"],  # written into a subset as .jpg, which webdataset's decoders read
    }


def test_a_member_in_a_folder_or_a_second_image_of_a_key_is_refused_at_import(tmp_path):
    rows = [{"key": "000000000"}]
    with pytest.raises(InputError, match=r"00000.tar: member 'sub/000000000.jpg' is in a folder") as e:
        _adopt(tmp_path, {"sub/000000000.jpg": _jpeg()}, rows, name="folder")
    _one_line_input_error(e, "repack")
    assert not (tmp_path / "folder-pool" / "shards" / "00000000.parquet").exists()
    with pytest.raises(InputError, match="key 000000000 has two images"):
        _adopt(tmp_path, {"000000000.jpg": _jpeg(), "000000000.png": _jpeg()}, rows, name="two")


def test_repeated_keys_in_img2datasets_parquet_are_refused_not_adopted(tmp_path):
    rows = [{"key": "000000000", "caption": "a cat"}, {"key": "000000000", "caption": "a dog"}]
    with pytest.raises(InputError, match=r"00000.parquet: rows 1 and 2 have the same key 000000000") as e:
        _adopt(tmp_path, {"000000000.jpg": _jpeg()}, rows)
    _one_line_input_error(e)
    assert not (tmp_path / "i2d-pool" / "shards" / "00000000.parquet").exists()


# ---------------------------------------------------------------------------------------------------
# finding 4: image bombs in adopted pools


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    bomb = _png_bomb()
    assert len(bomb) < 400_000
    with pytest.raises(decode.TooLarge, match=r"too_large: 13000x13000 = 169000000 pixels, over max_pixels 89478485"):
        decode.open_image(bomb)
    assert decode.open_image(bomb, max_pixels=0).size == (13000, 13000)  # 0: no limit, as download's
    assert decode.open_image(_jpeg()).size == (40, 30)


@pytest.fixture
def bomb_pool(tmp_path):
    members = {"000000000.jpg": _jpeg(), "000000001.png": _png_bomb()}
    _, out = _adopt(tmp_path, members, [{"key": "000000000"}, {"key": "000000001"}])
    return out


def test_base_features_record_a_bomb_in_an_adopted_tar_as_too_large(bomb_pool, monkeypatch):
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda im: decoded.append(im.size) or real_load(im))
    features.base_features_shard(0, str(bomb_pool))
    base = pq.read_table(Pool(bomb_pool).features("base", 0)).to_pylist()
    assert base[0]["error"] is None and base[0]["pdq"]
    assert base[1]["error"].startswith("too_large: 13000x13000") and base[1]["pdq"] is None
    assert (13000, 13000) not in decoded  # refused from its header, never decoded


@pytest.mark.parametrize("where", ["cpu", "actor"])
def test_clip_scoring_records_a_bomb_in_an_adopted_tar_as_too_large(bomb_pool, where, monkeypatch):
    """Both decoding paths: PIL in the decoding task, and the bytes shipped to the model actor (which
    decodes them with decode_batch: the bomb's bytes are not shipped, and would be refused there too)."""
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda im: decoded.append(im.size) or real_load(im))
    pp_cfg = models.preprocess_config("thresher-tiny", None)
    scorer_dir = str(bomb_pool / "features" / "clip_tiny")
    args = dict(pool=str(bomb_pool), scorer_dir=scorer_dir, pp_cfg=pp_cfg, rows_per_batch=8)
    (batch,) = features._decode_shards(
        {"shard": [0]}, **args, where=where, max_pixels=decode.max_pixels_of(str(bomb_pool))
    )
    errors = list(batch["error"])
    assert errors[0] == "" and errors[1].startswith("too_large: 13000x13000")
    if where == "actor":
        assert batch["image"][1] == b""
        pixels, errors = decode.decode_batch(list(batch["image"]), errors, pp_cfg, "cpu")
        assert errors[1].startswith("too_large") and int(pixels[1].sum()) == 0 and int(pixels[0].sum()) > 0
        # what the actor is handed unchecked is refused there as well
        _, again = decode.decode_batch([_png_bomb()], [""], pp_cfg, "cpu")
        assert again[0].startswith("too_large")
    assert (13000, 13000) not in decoded


# ---------------------------------------------------------------------------------------------------
# finding 5: adopted tars fingerprinted at import, checked by every later reader


def _replace_images(folder):
    """The same members, one image's bytes changed (what a user re-encoding a folder in place does)."""
    with tarfile.open(folder / "00000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for m, data in members:
            if m.name == "000000001.jpg":
                data = _jpeg((0, 0, 255))
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def _fake_subset(root, pool) -> str:
    """A subset manifest and lineage that name pool shard 0 as their samples' source (what
    `thresher subset` writes; its own shard checks are tests/test_subset.py's)."""
    root.mkdir()
    lineage = pa.Table.from_pylist(
        [
            {
                "uid": "0" * 32,
                "url": "http://example.com/1.jpg",
                "pool_shard": 0,
                "pool_key": "000000001",
                "steps": [],
                "subset_shard": 0,
                "subset_key": "000000000000",
                "copy": 0,
            }
        ],
        schema=schema.LINEAGE,
    )
    pq.write_table(lineage, root / "lineage.parquet")
    manifest = {
        "kind": "thresher.subset",
        "shards": [],
        "size": 1,
        "pool": {"path": str(pool)},
        "lineage": {"file": "lineage.parquet", "sha256": runtime.file_sha256(str(root / "lineage.parquet"))},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def test_a_replaced_adopted_tar_is_caught_by_features_subset_and_audit_verify(tmp_path):
    members = {"000000000.jpg": _jpeg(), "000000001.jpg": _jpeg((0, 200, 0))}
    folder, out = _adopt(tmp_path, members, [{"key": "000000000"}, {"key": "000000001"}])
    stats = json.loads((out / "shards" / "00000000_stats.json").read_text())
    assert stats["tar_sha256"] == runtime.file_sha256(str(folder / "00000.tar"))
    sub = _fake_subset(tmp_path / "subset", out)
    assert audit.verify(sub)["ok"] and len(Pool(out).read_images(0)) == 2 and reshard._member_index(str(out), 0)

    _replace_images(folder)
    changed = r"00000.tar: changed since import-pool made .*; restore it, or import the folder again"
    with pytest.raises(InputError, match=changed):
        Pool(out).read_images(0)  # base features and CLIP scoring read the images through it
    with pytest.raises(InputError, match=changed):
        reshard._member_index(str(out), 0)  # subset's index of a pool shard
    result = audit.verify(sub)
    assert not result["ok"] and any(p.startswith("changed source:") and "00000.tar" in p for p in result["problems"])


# ---------------------------------------------------------------------------------------------------
# finding 6: .npz bombs in import-metadata


def _metadata(d, rows: int = 4, **arrays) -> str:
    d.mkdir(exist_ok=True)
    table = pa.table(
        {
            "uid": [f"{i:032x}" for i in range(rows)],
            "url": [f"http://example.com/{i}.jpg" for i in range(rows)],
            "text": [f"a photo {i}" for i in range(rows)],
            "clip_l14_similarity_score": [0.3] * rows,
        }
    )
    pq.write_table(table, d / "a.parquet")
    if arrays:
        np.savez_compressed(d / "a.npz", **arrays)
    return str(d)


def test_an_npz_wider_than_its_scorer_is_refused_from_its_header(tmp_path, monkeypatch):
    """400 x 2,000,000 float16 compressed to 1.5 MB used to import (1.7 GB worker, 1.5 GB written); here
    4 x 2,000,000 (16 MB): refused from the .npy header, before a byte of the array is decompressed."""
    loaded = []
    real = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, k: loaded.append(k) or real(self, k))
    d = _metadata(tmp_path / "wide", l14_img=np.zeros((4, 2_000_000), np.float16))
    with pytest.raises(
        InputError, match=r"a.npz: l14_img has shape \(4, 2000000\): not rows x width with width 1..4096"
    ) as e:
        importing.import_metadata([d], str(tmp_path / "p"), npz_dir=d, **QUIET)
    _one_line_input_error(e)
    assert loaded == [] and not (tmp_path / "p" / "shards").exists()
    # every array of a scorer as wide as its first file's image embeddings
    d = _metadata(tmp_path / "txt", l14_img=np.ones((4, 768), np.float16), l14_txt=np.zeros((4, 2_000_000), np.float16))
    with pytest.raises(InputError, match=r"a.npz: l14_txt is 2000000 wide; scorer clip_l14's embeddings are 768 wide"):
        importing.import_metadata([d], str(tmp_path / "p2"), npz_dir=d, **QUIET)
    assert "l14_txt" not in loaded and not list((tmp_path / "p2").glob("shards/*.parquet"))
    ok = _metadata(tmp_path / "ok", l14_img=np.ones((4, 768), np.float16), l14_txt=np.ones((4, 768), np.float16))
    m = importing.import_metadata([ok], str(tmp_path / "p3"), npz_dir=ok, **QUIET)
    assert m["counts"]["rows"] == 4 and m["config"]["scorers"][0]["width"] == 768


# ---------------------------------------------------------------------------------------------------
# finding 11, import's part: malformed inputs named in one line


def _npz_bytes(kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "pickled":
        pickle.dump({"l14_img": np.zeros((4, 768))}, buf)
    elif kind == "strings":
        np.savez(buf, l14_img=np.array([["a"] * 768] * 4))
    elif kind == "objects":
        np.savez(buf, l14_img=np.array([[None] * 768] * 4, dtype=object))
    elif kind == "npy":
        np.save(buf, np.zeros((4, 768), np.float16))
    else:
        buf.write(b"not a zip at all" * 10)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("garbage", "not an .npz of arrays"),
        ("pickled", "not an .npz of arrays"),
        ("strings", "array l14_img holds <U1, not floating-point embeddings"),
        ("objects", "array l14_img holds object, not floating-point embeddings"),
        ("npy", "one .npy array, not an .npz of named arrays"),
    ],
)
def test_an_npz_that_is_not_one_of_float_arrays_is_named(tmp_path, kind, words):
    d = _metadata(tmp_path / "m")
    (tmp_path / "m" / "a.npz").write_bytes(_npz_bytes(kind))
    with pytest.raises(InputError) as e:
        importing.import_metadata([d], str(tmp_path / "p"), npz_dir=d, **QUIET)
    _one_line_input_error(e, "a.npz", words)


def test_metadata_that_is_not_parquet_is_named(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.parquet").write_bytes(b"PAR1 but not really" * 20)
    with pytest.raises(InputError) as e:
        importing.import_metadata([str(tmp_path / "m")], str(tmp_path / "p"), **QUIET)
    _one_line_input_error(e, "a.parquet", "as Parquet")
    folder = _i2d_folder(tmp_path / "i2d", {"000000000.jpg": _jpeg()}, [{"key": "000000000"}])
    (folder / "00000.parquet").write_bytes(b"garbage" * 30)
    with pytest.raises(InputError) as e:
        adopt.import_pool(str(folder), str(tmp_path / "p2"), **QUIET)
    _one_line_input_error(e, "00000.parquet", "as Parquet")


def test_a_null_status_or_a_garbage_stats_file_is_named(tmp_path):
    rows = [{"key": "000000000"}, {"key": "000000001", "status": None}]
    with pytest.raises(InputError) as e:
        _adopt(tmp_path, {"000000000.jpg": _jpeg()}, rows, name="null")
    _one_line_input_error(e, "00000.parquet: row 2, field 'status': null")
    for i, stats in enumerate((b"\x00\xffnot json", b"[1, 2]")):
        with pytest.raises(InputError) as e:
            _adopt(tmp_path, {"000000000.jpg": _jpeg()}, [{"key": "000000000"}], name=f"stats{i}", stats=stats)
        _one_line_input_error(e, "00000_stats.json: not img2dataset's stats JSON")


def test_a_binary_caption_column_is_named(tmp_path):
    folder = _i2d_folder(tmp_path / "i2d", {"000000000.jpg": _jpeg()}, [{"key": "000000000"}])
    table = pq.read_table(folder / "00000.parquet")
    table = table.set_column(table.column_names.index("caption"), "caption", pa.array([b"\xff\xfe"], pa.binary()))
    pq.write_table(table, folder / "00000.parquet")
    with pytest.raises(InputError) as e:
        adopt.import_pool(str(folder), str(tmp_path / "p"), **QUIET)
    _one_line_input_error(e, "00000.parquet: field 'caption' must hold text", "binary")
    d = _metadata(tmp_path / "m")
    table = pq.read_table(tmp_path / "m" / "a.parquet")
    pq.write_table(table.set_column(2, "text", pa.array([b"x"] * 4, pa.binary())), tmp_path / "m" / "a.parquet")
    with pytest.raises(InputError) as e:
        importing.import_metadata([d], str(tmp_path / "p2"), **QUIET)
    _one_line_input_error(e, "a.parquet: field 'text' must hold text")
