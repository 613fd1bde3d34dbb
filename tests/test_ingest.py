"""URL-list ingest: formats, column mapping, uids, and a clear error for each kind of malformed input."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.algo.hashes import make_uid
from thresher.app import cli
from thresher.core.errors import InputError
from thresher.stages.acquire import ingest


def _run(path, tmp_path, **kw):
    return ingest.ingest(str(path), str(tmp_path / "work"), **kw)


def _nothing_written(tmp_path):
    work = tmp_path / "work"
    return not work.exists() or not any(work.iterdir())


def test_uid_rule_is_documented_hash():
    url, text = "http://example.com/a.jpg", "a cat"
    assert make_uid(url, text) == hashlib.sha256(b"http://example.com/a.jpg\x00a cat").hexdigest()[:32]
    assert make_uid(url, None) == make_uid(url, "")
    assert len(make_uid(url, text)) == 32


def test_datacomp_parquet_reads_as_is(tmp_path):
    # DataComp's metadata columns, with its own uids, ride through unchanged
    table = pa.table(
        {
            "uid": ["0" * 31 + str(i) for i in range(5)],
            "url": [f"https://example.com/{i}.jpg" for i in range(5)],
            "text": [f"caption {i}" for i in range(5)],
            "original_width": [640] * 5,
            "original_height": [480] * 5,
            "clip_b32_similarity_score": [0.3] * 5,
            "clip_l14_similarity_score": [0.25] * 5,
            "face_bboxes": [[]] * 5,
            "sha256": ["ab" * 32] * 5,
        }
    )
    pq.write_table(table, tmp_path / "meta.parquet")
    result = _run(tmp_path / "meta.parquet", tmp_path, per_shard=2, extra_columns=("face_bboxes",))
    assert (result.rows, result.shards) == (5, 3)
    shard = ingest.read_shard_input(f"{result.directory}/00000000.arrow")
    assert shard.column_names == ["uid", "url", "caption", "face_bboxes"]
    assert shard.column("uid").to_pylist() == ["0" * 31 + "0", "0" * 31 + "1"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_with_mapped_columns(tmp_path, fmt):
    rows = [{"image": f"http://example.com/{i}.png", "alt": f"alt text {i}"} for i in range(7)]
    path = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        path.write_text("image,alt\n" + "".join(f"{r['image']},{r['alt']}\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _run(path, tmp_path, url_col="image", caption_col="alt", per_shard=10)
    shard = ingest.read_shard_input(f"{result.directory}/00000000.arrow")
    assert shard.column("uid").to_pylist() == [make_uid(r["image"], r["alt"]) for r in rows]
    assert shard.column("caption").to_pylist() == [r["alt"] for r in rows]


def test_missing_column_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"link": ["http://a/b.jpg"], "text": ["x y z"]}), tmp_path / "l.parquet")
    with pytest.raises(InputError) as err:
        _run(tmp_path / "l.parquet", tmp_path)
    assert "l.parquet" in str(err.value) and "'url'" in str(err.value) and "link" in str(err.value)
    assert _nothing_written(tmp_path)


def test_empty_url_names_row_and_field(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("url,text\nhttp://a/1.jpg,one\nhttp://a/2.jpg,two\n,three\n")
    with pytest.raises(InputError) as err:
        _run(path, tmp_path)
    msg = str(err.value)
    assert "l.csv" in msg and "row 3" in msg and "field 'url'" in msg and "empty URL" in msg
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("bad", ["ftp://a/1.jpg", "not a url", "file:///etc/passwd", "http://"])
def test_non_http_url_names_row_field_and_value(tmp_path, bad):
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({"url": "http://a/1.jpg", "text": "ok"}) + "\n" + json.dumps({"url": bad, "text": "x"}))
    with pytest.raises(InputError) as err:
        _run(path, tmp_path)
    msg = str(err.value)
    assert "l.jsonl" in msg and "row 2" in msg and "field 'url'" in msg and repr(bad) in msg


def test_bad_row_late_in_a_large_list_leaves_nothing(tmp_path):
    n = 25_000
    urls = [f"http://example.com/{i}.jpg" for i in range(n)]
    urls[-1] = "gopher://example.com/x"
    pq.write_table(pa.table({"url": urls, "text": ["a b c"] * n}), tmp_path / "l.parquet")
    with pytest.raises(InputError, match=f"row {n}"):
        _run(tmp_path / "l.parquet", tmp_path, per_shard=1000, batch_rows=4096)
    assert _nothing_written(tmp_path)


def test_unreadable_file(tmp_path):
    (tmp_path / "l.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(InputError, match=r"cannot read .*l\.parquet as parquet"):
        _run(tmp_path / "l.parquet", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        _run(tmp_path / "missing.parquet", tmp_path)
    (tmp_path / "l.xlsx").write_bytes(b"")
    with pytest.raises(InputError, match="--input-format"):
        _run(tmp_path / "l.xlsx", tmp_path)


def test_repeated_rows_are_refused_with_both_row_numbers(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("url,text\nhttp://a/1.jpg,one\nhttp://a/2.jpg,two\nhttp://a/1.jpg,one\n")
    with pytest.raises(InputError, match=r"rows 1 and 3 have the same uid"):
        _run(path, tmp_path)


def test_empty_list(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("url,text\n")
    with pytest.raises(InputError, match="no rows"):
        _run(path, tmp_path)


def test_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    path = tmp_path / "l.csv"
    path.write_text("url,text\nhttp://a/1.jpg,one\nmailto:x@y,two\n")
    code = cli.main(["download", str(path), "--out", str(tmp_path / "pool")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "row 2" in err and "Traceback" not in err
    assert not (tmp_path / "pool" / "shards").exists()


@pytest.mark.parametrize(
    "host,refused",
    [
        ("example.com", False),
        ("93.184.216.34", False),
        ("[2606:2800:220:1::1]", False),
        ("localhost", True),
        ("LOCALHOST", True),
        ("foo.localhost", True),
        ("127.0.0.1", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f000001", True),
        ("[::1]", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("169.254.1.1", True),
        ("[fe80::1]", True),
        ("[::ffff:10.0.0.1]", True),
        ("0.0.0.0", True),
        ("100.64.0.1", True),
        ("metadata.google.internal", True),
        ("[fd00:ec2::254]", True),
    ],
)
def test_host_refusal(host, refused):
    assert (ingest.host_refusal(host) is not None) == refused


def test_refusals_extracts_hosts_from_urls():
    urls = pa.array(
        [
            "http://user:pw@127.0.0.1:80/x",
            "https://example.com/a?b#c",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data",
        ]
    )
    reasons = ingest.refusals(urls)
    assert reasons[1] is None
    assert "loopback" in reasons[0] and "loopback" in reasons[2] and "metadata" in reasons[3]


def _parts(tmp_path, sizes, start=0):
    """URL-list parts as DataComp ships its metadata: a directory of Parquet files."""
    d = tmp_path / "metadata"
    d.mkdir(exist_ok=True)
    n = start
    for i, size in enumerate(sizes):
        pq.write_table(
            pa.table(
                {
                    "uid": [f"{k:032x}" for k in range(n, n + size)],
                    "url": [f"https://example.com/{k}.jpg" for k in range(n, n + size)],
                    "text": [f"caption {k}" for k in range(n, n + size)],
                }
            ),
            d / f"{i:08d}.parquet",
        )
        n += size
    (d / "_SUCCESS").write_text("")  # what Spark leaves beside its parts: not a URL list
    return d


def test_a_directory_of_parts_is_ingested_by_ray_tasks_in_file_order(tmp_path, ray_local):
    d = _parts(tmp_path, [5, 9, 3])
    result = _run(d, tmp_path, per_shard=4)
    # shards are cut per file (4+1, 4+4+1, 3), numbered in file order, so no shard spans two files
    assert (result.rows, result.shards) == (17, 6)
    sizes = [ingest.read_shard_input(f"{result.directory}/{s:08d}.arrow").num_rows for s in range(6)]
    assert sizes == [4, 1, 4, 4, 1, 3]
    uids = [
        u
        for s in range(6)
        for u in ingest.read_shard_input(f"{result.directory}/{s:08d}.arrow").column("uid").to_pylist()
    ]
    assert uids == [f"{k:032x}" for k in range(17)]
    assert [f["rows"] for f in result.files] == [5, 9, 3] and len(result.input_sha256) == 64
    assert sorted(p.name for p in (tmp_path / "work" / "inputs").iterdir()) == [f"{s:08d}.arrow" for s in range(6)]
    # a glob names the same parts
    again = ingest.ingest(str(d / "*.parquet"), str(tmp_path / "work2"), per_shard=4)
    assert (again.rows, again.shards, again.input_sha256) == (17, 6, result.input_sha256)


def test_a_uid_repeated_across_parts_names_both_files_and_rows(tmp_path, ray_local):
    d = _parts(tmp_path, [5, 4])
    pq.write_table(
        pa.table(
            {
                "uid": [f"{k:032x}" for k in (20, 21, 3)],  # row 3 of the third file repeats uid 3
                "url": [f"https://example.com/x{k}.jpg" for k in range(3)],
                "text": ["a", "b", "c"],
            }
        ),
        d / "00000002.parquet",
    )
    with pytest.raises(InputError) as err:
        _run(d, tmp_path, per_shard=2)
    message = str(err.value)
    assert f"row 4 of {d / '00000000.parquet'} and row 3 of {d / '00000002.parquet'}" in message
    assert f"{3:032x}" in message
    assert _nothing_written(tmp_path)


def test_a_bad_row_in_one_part_names_that_part(tmp_path, ray_local):
    d = _parts(tmp_path, [3, 3])
    pq.write_table(
        pa.table({"url": ["https://example.com/a.jpg", "ftp://example.com/b.jpg"], "text": ["a", "b"]}),
        d / "00000001.parquet",
    )
    with pytest.raises(InputError) as err:
        _run(d, tmp_path)
    assert str(err.value).startswith(f"{d / '00000001.parquet'}: row 2, field 'url': not an http(s) URL")
    assert _nothing_written(tmp_path)


def test_an_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no URL-list files"):
        _run(tmp_path / "empty", tmp_path)
