"""Hardening (issue 15): what a user, a web page or another run on the machine hands us cannot break a
command, escape its folder or reach a private address.

Each test here failed before its fix (the issue names the finding) and passes now.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from thresher.core.pool import Pool

# what every command does first: start Ray (a local instance of its own when no address is given)
INIT = (
    "import ray; from thresher.exec import execute; execute.init_ray(num_cpus=1); "
    "print('CPUS', int(ray.cluster_resources()['CPU']))"
)


def _run_init(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", INIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of its own (where ray_current_cluster lives), short: Ray's socket paths under it
    must fit AF_UNIX's 107 bytes, which pytest's tmp_path does not."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def test_a_stale_ray_current_cluster_file_does_not_break_commands(ray_tmp):
    """Finding 5: `ray.init()` without an address follows the `ray_current_cluster` file a killed cluster
    leaves behind; every command then failed. Thresher starts its own local instance."""
    env = _env(ray_tmp)
    folder = ray_tmp / "ray"
    folder.mkdir(parents=True)
    (folder / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing listens there
    r = _run_init(env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CPUS 1" in r.stdout


@pytest.mark.slow
def test_a_second_local_cluster_does_not_capture_commands(ray_tmp):
    """Finding 5: with a head node started by `ray start` on the machine, `init_ray` passed num_cpus to a
    `ray.init()` that found it: ValueError. Now the command runs on a local instance of its own."""
    env = _env(ray_tmp)
    port = free_port()
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=3",
            "--include-dashboard=false",
            "--block",
        ],
        # stopped below by SIGTERM to its whole process group: Ray's GCS goes too, so the head's drain-on-SIGTERM
        # (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s by default) only waited for a GCS that was gone
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        marker = ray_tmp / "ray" / "ray_current_cluster"
        for _ in range(120):
            if marker.exists():
                break
            time.sleep(0.5)
        assert marker.exists(), "ray start did not come up"
        r = _run_init(env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "CPUS 1" in r.stdout  # its own instance, not the head's 3 CPUs
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Finding 1: names that become paths

BAD_NAMES = ["..", "../shards", "a/b", "/etc", ".hidden", "", "x" * 200, "a b", "ok/../..", "..x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_name_rule_refuses_names_that_could_escape(name):
    from thresher.core.config import check_name
    from thresher.core.errors import InputError

    with pytest.raises(InputError, match="cannot be used as a name"):
        check_name(name, "recipe name", "r.yaml: field 'name'")
    assert check_name("datacomp-clip-l14-30pct", "recipe name", "x") == "datacomp-clip-l14-30pct"


def _tree(pool: Path) -> dict:
    return {str(p.relative_to(pool)): p.stat().st_mtime_ns for p in pool.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["..", "../shards"])
def test_a_recipe_named_to_escape_is_refused_before_any_work(featured_pool, tmp_path, capsys, name):
    """`name: ..` replaced the pool's manifest.json, `name: ../shards` every shard's Parquet."""
    from thresher.app import cli

    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: '{name}'\nsteps:\n  - filter: none\n")
    before = _tree(featured_pool)
    assert cli.main(["filter", str(featured_pool), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "evil.yaml: field 'name'" in err and "cannot be used as a name" in err
    assert _tree(featured_pool) == before  # nothing written, nothing replaced


def test_a_scorer_id_scale_name_or_job_name_that_escapes_is_refused(featured_pool, tmp_path, capsys):
    from thresher.app import cli, jobs
    from thresher.core.errors import InputError
    from thresher.experiments import train

    before = _tree(featured_pool)
    assert (
        cli.main(
            [
                "features",
                str(featured_pool),
                "--model",
                "thresher-w32",
                "--pretrained",
                "none",
                "--scorer-id",
                "../shards",
                "--no-base",
            ]
        )
        == 2
    )
    assert "scorer id '../shards' cannot be used as a name" in capsys.readouterr().err
    assert _tree(featured_pool) == before
    (tmp_path / "s.yaml").write_text(
        "scales:\n  - {name: ../x, model: thresher-w32, samples_seen: 8, batch_size: 8, lr: 0.1, warmup: 1}\n"
    )
    with pytest.raises(InputError, match="scale name '../x'"):
        train.load_scales(str(tmp_path / "s.yaml"))
    (tmp_path / "j.yaml").write_text("name: ../../etc\nsteps:\n  - fit: {results: r.csv, x: a, y: b, out: f}\n")
    with pytest.raises(InputError, match="job name"):
        jobs.load(str(tmp_path / "j.yaml"))
    (tmp_path / "k.yaml").write_text("name: k\nsteps:\n  - fit: {results: r.csv, x: a, y: b, out: ../../elsewhere}\n")
    with pytest.raises(InputError, match="leaves the job's directory"):
        jobs.load(str(tmp_path / "k.yaml"), out=str(tmp_path / "job"))
    (tmp_path / "l.yaml").write_text("- fit: {}\n")
    with pytest.raises(InputError, match="a job is a mapping"):
        jobs.load(str(tmp_path / "l.yaml"))


# ---------------------------------------------------------------------------------------------------
# Finding 6: concurrent writers of one output


def test_a_second_writer_of_the_same_decisions_is_refused(featured_pool, tmp_path):
    """Two `thresher filter` runs of one recipe at once both exited 0, one's decisions silently replacing
    the other's. Now the output is held by one writer: while it runs, a second is refused with a clear
    message (tested with the first writer holding the lock, so the overlap is certain), and once it is
    done the same command runs."""
    from thresher.core import runtime

    out = featured_pool / "decisions" / "datacomp-basic"
    cmd = [str(Path(sys.executable).parent / "thresher"), "filter", str(featured_pool), "--recipe", "datacomp-basic"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with runtime.output_lock(str(out), "the decisions of recipe datacomp-basic"):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "being written by another run" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_json_writers_use_temporaries_of_their_own(tmp_path, monkeypatch):
    """runtime.write_json always used NAME.tmp: two writers wrote into one temporary."""
    from thresher.core import runtime

    seen = []
    real_mv = runtime.fsspec.implementations.local.LocalFileSystem.mv

    def spy(self, a, b, **kw):
        seen.append(a)
        return real_mv(self, a, b, **kw)

    monkeypatch.setattr(runtime.fsspec.implementations.local.LocalFileSystem, "mv", spy)
    runtime.write_json(str(tmp_path / "m.json"), {"a": 1})
    runtime.write_json(str(tmp_path / "m.json"), {"a": 2})
    assert len(set(seen)) == 2 and all(str(os.getpid()) in s for s in seen)
    assert runtime.read_json(str(tmp_path / "m.json")) == {"a": 2}


# ---------------------------------------------------------------------------------------------------
# Finding 3: image bombs at download


def png_bomb(side: int = 30000) -> bytes:
    """A valid grayscale PNG of side x side pixels whose compressed body is under a megabyte: decoding
    it takes side^2 bytes (900 MB at 30000)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_an_image_bomb_is_refused_from_its_header_without_decoding():
    """Two 30000x30000 PNGs (150 KB and 2.7 MB) took the download past 3 GB and were stored as successes.
    The download now reads width and height from the header and refuses the image as too_large before
    decoding it; the process grows by far less than the 900 MB a decode would take."""
    import io
    import resource

    from thresher.stages.acquire import download

    bomb = png_bomb()
    assert len(bomb) < 2_000_000
    resizer = download.make_resizer(download.DownloadConfig())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    img, *_, err = resizer(io.BytesIO(bomb))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert img is None and err.startswith("too_large: ") and "900000000 pixels" in err
    assert grown_mb < 100, grown_mb
    assert download.classify("failed_to_resize", err) == "too_large"
    # a normal image passes through to img2dataset's own resizer
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, format="JPEG")
    img, w, h, ow, oh, err = resizer(io.BytesIO(buf.getvalue()))
    assert err is None and (ow, oh) == (64, 48)
    # the limit is configurable, and 0 turns it off
    small = download.make_resizer(download.DownloadConfig(max_pixels=1000))
    assert small(io.BytesIO(buf.getvalue()))[-1].startswith("too_large: 64x48")


@pytest.fixture
def bomb_server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving a PNG bomb and an ordinary JPEG."""
    import functools
    import http.server
    import threading

    from PIL import Image

    www = tmp_path / "www"
    www.mkdir()
    (www / "bomb.png").write_bytes(png_bomb())
    Image.new("RGB", (96, 64), "blue").save(www / "ok.jpg")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_download_records_a_bomb_as_too_large(bomb_server, tmp_path, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.stages.acquire import download

    pq.write_table(
        pa.table({"url": [f"{bomb_server}/bomb.png", f"{bomb_server}/ok.jpg"], "text": ["a bomb", "a blue image"]}),
        tmp_path / "urls.parquet",
    )
    cfg = download.DownloadConfig(samples_per_shard=10, threads=2, timeout=5, allow_private_addresses=True)
    download.run(str(tmp_path / "urls.parquet"), str(tmp_path / "pool"), cfg, log=lambda *_: None)
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in Pool(str(tmp_path / "pool")).read_metadata().to_pylist()}
    assert rows["bomb.png"]["failure"] == "too_large" and rows["bomb.png"]["status"] != "success"
    assert rows["ok.jpg"]["status"] == "success"


# ---------------------------------------------------------------------------------------------------
# Finding 2: the private-address check

# hosts that reach this machine (or another private or metadata address), each spelled another way
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "017700000001",
    "127.000.000.001",
    "12\u00ad7.0.0.1",  # a soft hyphen inside 127: IDNA nameprep drops it
    "\uff11\uff12\uff17.0.0.1",  # full-width digits: nameprep maps them to 127
    "127\u30020\u30020\u30021",  # ideographic full stops: IDNA reads them as dots
    "LOCALHOST",
    "localhost.",
    "a.b.localhost",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "0.0.0.0",
    "0",
    "127.127.127.127",
]
OTHER_PRIVATE = [
    "10.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "169.254.169.254",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "100.64.0.1",
    "[fe80::1]",
    "metadata.google.internal",
    "224.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS + OTHER_PRIVATE)
def test_every_spelling_of_a_private_host_is_refused_as_written(host):
    from thresher.core import netsafety

    assert netsafety.host_refusal(host) is not None, host
    assert netsafety.host_refusal("example.com") is None and netsafety.host_refusal("8.8.8.8") is None


@pytest.fixture
def counting_server():
    """Two threaded servers on 127.0.0.1 that count their requests: `a` redirects to `b`."""
    import http.server
    import threading

    hits = {"a": 0, "b": 0}
    servers = {}

    def handler_for(name):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits[name] += 1
                if name == "a":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{servers['b'].server_address[1]}/x.jpg")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"private bytes")

            def log_message(self, *a):
                pass

        return Handler

    for name in ("b", "a"):
        servers[name] = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(name))
        threading.Thread(target=servers[name].serve_forever, daemon=True).start()
    yield {k: s.server_address[1] for k, s in servers.items()}, hits
    for s in servers.values():
        s.shutdown()


def test_no_spelling_reaches_a_local_server_through_the_fetch(counting_server):
    """At connect time, not only as written: every spelling the resolver accepts is refused before a
    byte is sent, and so is a redirect from an allowed host to a private one."""
    import urllib.error

    from thresher.core import netsafety

    ports, hits = counting_server
    opener = netsafety.safe_opener()
    for host in LOOPBACK_SPELLINGS:
        with pytest.raises((urllib.error.URLError, UnicodeError, ValueError, OSError)) as err:
            opener.open(f"http://{host}:{ports['b']}/x.jpg", timeout=5)
        if isinstance(err.value, urllib.error.URLError) and netsafety.REFUSED not in str(err.value):
            # names the resolver does not know (no DNS here) fail to resolve: also nothing fetched
            assert "Name or service not known" in str(err.value) or "not known" in str(err.value), (host, err.value)
    assert hits["b"] == 0
    # a redirect from a host the user allowed (a mirror) to a private one is refused, not followed
    mirror = netsafety.safe_opener(allow_hosts=[f"127.0.0.1:{ports['a']}"])
    with pytest.raises(urllib.error.URLError, match="disallowed_address: redirect to"):
        mirror.open(f"http://127.0.0.1:{ports['a']}/start", timeout=5)
    assert hits == {"a": 1, "b": 0}


def test_a_download_records_a_redirect_to_a_private_host_as_disallowed(counting_server, tmp_path, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.stages.acquire import download

    ports, hits = counting_server
    pq.write_table(
        pa.table(
            {
                "url": [f"http://127.0.0.1:{ports['a']}/start", f"http://127.1:{ports['b']}/x.jpg"],
                "text": ["redirects", "loopback"],
            }
        ),
        tmp_path / "urls.parquet",
    )
    cfg = download.DownloadConfig(
        samples_per_shard=10, threads=2, timeout=5, retries=0, allow_hosts=[f"127.0.0.1:{ports['a']}"]
    )
    download.run(str(tmp_path / "urls.parquet"), str(tmp_path / "pool"), cfg, log=lambda *_: None)
    rows = Pool(str(tmp_path / "pool")).read_metadata().to_pylist()
    assert [r["failure"] for r in rows] == ["disallowed_address", "disallowed_address"]
    assert hits["b"] == 0 and hits["a"] == 1


# ---------------------------------------------------------------------------------------------------
# Finding 4: training that cannot make progress


def _tar(path: Path, members: dict) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_training_on_dotted_keys_fails_fast_instead_of_spinning(tmp_path):
    """`photo.v0000000000.jpg` + `.txt`: we counted samples that webdataset reads as extension
    'v0000000000.jpg', and the resampled loader spun forever at 100% CPU. Now: an error in seconds."""
    import io

    from PIL import Image

    from thresher.core.errors import InputError
    from thresher.experiments import train

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="JPEG")
    data = tmp_path / "data"
    data.mkdir()
    _tar(
        data / "0.tar",
        {f"photo{i}.v000000000{i}.jpg": buf.getvalue() for i in range(4)}
        | {f"photo{i}.v000000000{i}.txt": b"a red square" for i in range(4)},
    )
    scale = train.Scale(
        name="t",
        model="thresher-w32",
        samples_seen=64,
        batch_size=8,
        lr=1e-3,
        warmup=1,
        schedule="const",
        checkpoints=1,
    )
    started = time.time()
    with pytest.raises(InputError, match="ends a sample's key at the first dot"):
        train.train_scale(str(data), scale, str(tmp_path / "run"), log=lambda *_: None)
    assert time.time() - started < 30
    _tar(data / "0.tar", {"../evil.jpg": buf.getvalue(), "../evil.txt": b"x"})
    with pytest.raises(InputError, match="would escape its folder"):
        train.count_samples([str(data / "0.tar")])


def test_the_watchdog_turns_a_stall_into_an_error():
    from thresher.core import runtime
    from thresher.core.errors import StageError

    started = time.time()
    with pytest.raises(StageError, match="no progress for 1s"):
        with runtime.watchdog(lambda: 0, stall_s=1, what="a stalled loop", poll_s=0.2):
            while True:  # what the loader did: no progress, ever
                time.sleep(0.05)
    assert time.time() - started < 10
    ticks = iter(range(10**9))
    with runtime.watchdog(lambda: next(ticks), stall_s=1, what="progressing", poll_s=0.2):
        time.sleep(2)  # progress keeps changing: no error


def test_the_watchdog_stops_a_stall_where_sigint_is_ignored():
    """A command started in the background by a script (`thresher ... &`) inherits SIGINT ignored: the
    watchdog's signal did nothing and the stalled command hung until killed. It stops now, and a SIGINT
    from elsewhere is still ignored."""
    code = (
        "import os, signal, time\n"
        "from thresher.core import runtime\n"
        "from thresher.core.errors import StageError\n"
        "with runtime.watchdog(lambda: 0, stall_s=3, what='x', poll_s=0.2):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # someone else's: ignored, as before\n"
        "    time.sleep(0.5)\n"
        "    print('still running', flush=True)\n"
        "try:\n"
        "    with runtime.watchdog(lambda: 0, stall_s=1, what='a stalled read', poll_s=0.2):\n"
        "        time.sleep(60)\n"
        "except StageError as err:\n"
        "    print(err)\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
    )
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "still running",
        "a stalled read: no progress for 1s; stopped instead of spinning",
    ]
    assert time.time() - started < 30


# ---------------------------------------------------------------------------------------------------
# Finding 7: bad input ends in one line, never a traceback

BAD = Path(__file__).parent / "data" / "bad_inputs"
YAMLS = ["not_yaml.yaml", "list.yaml", "empty.yaml", "scalar.yaml", "binary.bin"]


def _bad_cases(tmp: Path) -> list[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    not_pool = tmp / "not_a_pool"
    not_pool.mkdir(exist_ok=True)
    (not_pool / "stray.txt").write_text("x")
    # a Parquet URL list whose captions are not UTF-8 (binary column read as text)
    pq.write_table(
        pa.table(
            {
                "url": pa.array([b"http://example.com/a.jpg"], pa.binary()),
                "text": pa.array([b"caf\xe9 \xff"], pa.binary()),
            }
        ),
        tmp / "not_utf8.parquet",
    )
    out = str(tmp / "out")
    cases = []
    for f in ["not_utf8.jsonl", "header_only.csv", "binary.bin", "empty.yaml", str(tmp / "not_utf8.parquet")]:
        cases.append(["download", str(BAD / f) if "/" not in f else f, "--out", out + "-dl"])
    for f in YAMLS:
        cases += [
            ["filter", str(not_pool), "--recipe", str(BAD / f)],
            ["run", str(BAD / f), "--dry-run"],
            [
                "grid",
                "--subset",
                str(not_pool),
                "--scale",
                str(BAD / f),
                "--eval-set",
                str(not_pool),
                "--out",
                out + "-grid",
            ],
            ["train", str(not_pool), "--scale", str(BAD / f), "--out", out + "-train"],
        ]
    for f in ["non_numeric.csv", "binary.bin", "header_only.csv"]:
        cases += [
            ["fit", str(BAD / f), "--x", "gflops_total", "--y", "acc", "--out", out + "-fit"],
            [
                "compare",
                str(BAD / f),
                "--a",
                "a",
                "--b",
                "b",
                "--metric",
                "acc",
                "--target-compute",
                "2x",
                "--out",
                out + "-cmp",
            ],
        ]
    cases += [
        ["dedup", str(not_pool)],
        ["features", str(not_pool)],
        ["filter", str(not_pool), "--recipe", "datacomp-basic"],
        ["subset", str(not_pool), "--recipe", "datacomp-basic", "--size", "10", "--out", out + "-sub"],
        ["export-metadata", str(not_pool), "--out", out + ".parquet"],
        ["audit", "verify", str(not_pool)],
        ["audit", "report", str(not_pool), "--out", out + ".html"],
        ["eval", str(not_pool), "--eval-set", str(not_pool)],
        ["train", str(not_pool), "--scale", f"{not_pool}/x.yaml/NAME", "--out", out + "-train"],
        ["train", str(not_pool), "--scale", str(not_pool), "--out", out + "-train"],
    ]
    return cases


def test_every_command_ends_bad_input_in_one_line(tmp_path, capsys, ray_local):
    from thresher.app import cli

    failures = []
    for argv in _bad_cases(tmp_path):
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc == 0 or len(lines) != 1 or "Traceback" in err or "unexpected" in err:
            failures.append((argv[:2], rc, err[-400:]))
    assert not failures, "\n".join(map(str, failures))


# ---------------------------------------------------------------------------------------------------
# Property-based: the config and table loaders answer any input with data or an InputError

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["url_col", "timeout", "threads", "extra_columns", "allow_hosts", "max_pixels", "resize_mode", "nope", ""]
        ),
        VALUES,
        max_size=5,
    )
)
def test_config_loader_takes_any_mapping(data):
    from thresher.core.config import from_dict
    from thresher.core.errors import InputError
    from thresher.stages.acquire.download import DownloadConfig

    try:
        cfg = from_dict(DownloadConfig, data, where="cfg.yaml")
        cfg.validate()
    except InputError as err:
        assert "cfg.yaml" in str(err) or str(err)  # a message, never another exception


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_yaml_reader_takes_any_bytes(tmp_path, blob):
    from thresher.core.config import read_yaml
    from thresher.core.errors import InputError

    path = tmp_path / "x.yaml"
    path.write_bytes(blob)
    try:
        read_yaml(path)
    except InputError as err:
        assert str(path) in str(err)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.text(max_size=6),
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4)),
            st.one_of(st.floats(0, 1), st.text(max_size=4)),
        ),
        min_size=0,
        max_size=12,
    )
)
def test_results_table_loader_takes_any_rows(tmp_path, rows):
    import pandas as pd

    from thresher.core.errors import InputError
    from thresher.experiments import compare, scaling

    path = tmp_path / "r.csv"
    pd.DataFrame(rows, columns=["recipe", "gflops_total", "acc"]).to_csv(path, index=False)
    df = scaling.read_table(str(path))
    for call in (
        lambda: scaling.points(df, "gflops_total", "acc", "recipe", True, str(path)),
        lambda: compare.arms_from_table(df, "a", "b", compare.TableSpec("acc", where=str(path))),
    ):
        try:
            call()
        except InputError:
            pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30)), min_size=1, max_size=8),
    st.sampled_from(["csv", "jsonl"]),
)
def test_url_list_reader_takes_any_rows(tmp_path, rows, fmt):
    import json

    from thresher.core.errors import InputError
    from thresher.stages.acquire import ingest

    path = tmp_path / f"u.{fmt}"
    if fmt == "csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["url", "text"])
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps({"url": u, "text": t}) + "\n" for u, t in rows))
    try:
        for batch in ingest._read_batches(str(path), fmt, ["url", "text"], 100):
            ingest._utf8(str(path), batch, 0)
            ingest._validate(str(path), batch, 0, "url", None)
    except InputError as err:
        assert str(path) in str(err)


# ---------------------------------------------------------------------------------------------------
# Finding 8: a killed command's Ray workers go with it


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "sid=,pid=,cmd="], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.split(None, 1)[0] == str(sid)]


@pytest.mark.parametrize("kill", ["group", "driver"])
def test_a_killed_download_leaves_no_ray_process_behind(tmp_path, kill):
    """A Ray worker outlived a SIGKILL of its command's process group by about 40 s, holding memory: the
    busy worker runs in a process group of its own. Every process of the command's session is gone
    within 20 s (it exits when Ray's liveness check finds its raylet dead), even while it is blocked
    reading from a server that never answers.

    `kill -9` of the driver alone (issue 25, finding 12) left Ray's DashboardAgent and RuntimeEnvAgent
    for 62-73 s: they outlive the raylet, report its death to the GCS (dead too) and wait 60 s on that.
    The reaper `execute.init_ray` starts kills them, and the rest, as soon as the driver is gone."""
    import http.server
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(120)  # never answers while the test runs

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{srv.server_address[1]}/{i}.jpg" for i in range(8)]
    pq.write_table(pa.table({"url": urls, "text": ["x"] * 8}), tmp_path / "urls.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "thresher"),
            "download",
            str(tmp_path / "urls.parquet"),
            "--out",
            str(tmp_path / "pool"),
            "--allow-private-addresses",
            "--timeout",
            "100",
            "--threads",
            "4",
            "--processes",
            "1",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):  # until the shard's task is running (a worker blocked on the stalled server)
            if any("ray::download" in ln for ln in _session_processes(proc.pid)):
                break
            time.sleep(0.5)
        assert any("ray::download" in ln for ln in _session_processes(proc.pid))
        if kill == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.time()
        while _session_processes(proc.pid) and time.time() - killed < 60:
            time.sleep(0.5)
        left = _session_processes(proc.pid)
        print(f"all of the killed command's processes gone {time.time() - killed:.1f}s after the kill")
        assert not left and time.time() - killed < 20, (round(time.time() - killed, 1), left)
    finally:
        release.set()
        srv.shutdown()
        for ln in _session_processes(proc.pid):
            os.kill(int(ln.split()[1]), signal.SIGKILL)
