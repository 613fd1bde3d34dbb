"""Where stages' bytes live, and the guards around a stage: output locks, the watchdog, provenance.
How work runs (Ray or local, retries, deadlines) is `execute.py`.

- Storage: every path goes through fsspec, so `s3://`, `gs://` and local paths work the same way
  wherever the matching fsspec backend and credentials exist.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

log = logging.getLogger("thresher")

# The packages whose versions a manifest records.
TRACKED_PACKAGES = (
    "thresher",
    "ray",
    "pyarrow",
    "img2dataset",
    "webdataset",
    "open_clip_torch",
    "torch",
    "torchvision",
    "faiss-cpu",
    "fasttext-numpy2",
    "datatrove",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "pdqhash",
    "fsspec",
)


def fs_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def exists(url: str) -> bool:
    fs, path = fs_path(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = fs_path(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = fs_path(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_json(url: str) -> Any:
    fs, path = fs_path(url)
    with fs.open(path, "r") as f:
        return json.load(f)


def write_json(url: str, obj: Any) -> None:
    """Write JSON atomically where the filesystem allows: a reader never sees half a file."""
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def write_bytes(url: str, data: bytes) -> None:
    """Write a file atomically where the filesystem allows (`atomic_writer`)."""
    with atomic_writer(url) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(url: str):
    """A file object whose content appears at `url` only once it is complete: written beside under the
    writer's own temporary name (pid and a random suffix, so two writers never write into one file),
    then renamed; removed instead when the block raises."""
    import uuid

    fs, path = fs_path(url)
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            yield f
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    fs.mv(tmp, path)


# atomic_writer's temporary names: <file>.<pid>-<8 hex>.tmp
_TEMPORARY = re.compile(r"\.\d+-[0-9a-f]{8}\.tmp$")


def remove_temporaries(directory: str) -> int:
    """Remove what writers killed mid-write left in `directory` (atomic_writer's temporaries: a process
    killed between writing and renaming, as with a lost node, leaves one); how many. Call it only while
    no writer of the directory runs (the run holding its output lock, after its tasks ended)."""
    found = [p for p in glob(join(directory, "*.tmp")) if _TEMPORARY.search(p)]
    for p in found:
        remove(p)
    return len(found)


@contextlib.contextmanager
def output_lock(directory: str, what: str):
    """Hold `directory` for one writer: a second run that would write the same output at the same time
    is refused at once with a clear error, instead of the two silently replacing each other's files.
    An advisory lock (flock, through fasteners) on DIRECTORY/.thresher.lock: the kernel releases it when
    its process dies, so a killed run never leaves a stale lock. Object stores have no such lock: there
    the caller's output must be its own (docs/reliability.md)."""
    if "://" in directory and not directory.startswith("file://"):
        yield
        return
    import fasteners

    from thresher.core.errors import InputError

    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ".thresher.lock")
    lock = fasteners.InterProcessLock(path)
    if not lock.acquire(blocking=False):
        raise InputError(
            f"{directory}: {what} is being written by another run right now; wait for it to "
            f"finish (then run again: finished work is kept), or choose another output"
        )
    try:
        yield
    finally:
        lock.release()
        # a folder made only to hold the lock (a subset's _work on a re-run of a finished subset) goes again
        if created and os.path.isdir(directory) and os.listdir(directory) == [".thresher.lock"]:
            os.remove(path)
            os.rmdir(directory)


@contextlib.contextmanager
def file_lock(url: str, what: str):
    """output_lock's rule for an output that is one file in a folder of the user's (a uid file): a second
    run that would write `url` at the same time is refused at once, instead of both reporting success
    and the file holding whichever finished last. The lock is an flock on `URL.lock` (released by the
    kernel when its process dies). It is removed while still held, so none stays beside the output; a
    run that opened it just before holds a removed file, sees that, and locks the new one instead."""
    if "://" in url and not url.startswith("file://"):
        yield
        return
    import fcntl

    from thresher.core.errors import InputError

    path = f"{fs_path(url)[1]}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise InputError(f"{url}: cannot write in its folder ({err.strerror}); choose another path") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"{url}: {what} is being written by another run right now; wait for it to finish, or choose "
                f"another output"
            ) from None
        if _is_at(fd, path):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.remove(path)
        os.close(fd)


def _is_at(fd: int, path: str) -> bool:
    """Whether the open file `fd` is still the file at `path` (not removed, nor replaced)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def watchdog(progress: Callable[[], Any], stall_s: float, what: str, poll_s: float = 5.0):
    """Turn a stall into an error: while the block runs, a thread reads `progress()` every `poll_s`; if
    it has not changed for `stall_s` seconds, the main thread is interrupted and StageError names the
    stall, instead of the block spinning forever (a loader that never fills a batch: issue 15)."""
    import signal
    import threading

    from thresher.core.errors import StageError

    stop, fired = threading.Event(), threading.Event()

    def watch():
        last, since = progress(), time.monotonic()
        while not stop.wait(poll_s):
            now = progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall_s:
                fired.set()
                # a real SIGINT to the main thread, not _thread.interrupt_main(): only a signal
                # interrupts a blocking call (a sleep, an open() of a hung file) in C
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return

    # a process started in the background by a script (`thresher ... &`) inherits SIGINT ignored, and the
    # signal above then did nothing: the stalled command hung. While the block runs, the watchdog's own
    # SIGINT interrupts it; any other stays ignored, as the process was started
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:

        def on_sigint(signum, frame):
            if fired.is_set():
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
    thread = threading.Thread(target=watch, daemon=True, name="thresher-watchdog")
    thread.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            raise StageError(f"{what}: no progress for {stall_s:.0f}s; stopped instead of spinning") from None
        raise
    finally:
        stop.set()
        thread.join(timeout=poll_s + 1)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def holds(where: Callable[..., str], what: str):
    """Decorator: the stage runs holding output_lock(where(*its arguments), what)."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with output_lock(where(*args, **kwargs), what):
                return fn(*args, **kwargs)

        return inner

    return wrap


def write_npz(url: str, arrays: dict) -> None:
    """Named arrays in one .npz (a zip): the staging format of the partitioned steps (ingest's uid check,
    partitioned dedup), one member per partition so that a reader takes only its own."""
    import numpy as np

    fs, path = fs_path(url)
    with fs.open(path, "wb") as f:
        np.savez(f, **arrays)


def read_npz(url: str, names: list[str]) -> list:
    """The named members of an .npz, read without the others (the zip's directory says where each is)."""
    import numpy as np

    fs, path = fs_path(url)
    with fs.open(path, "rb") as f, np.load(f) as z:
        return [z[n] for n in names]


def read_parquet(url: str, columns: list[str] | None = None, use_threads: bool = True):
    """use_threads=False in one-CPU Ray tasks: decoding threads there only contend with other tasks
    (measured: a 1M-row uid column reads in half the time without them on 2 cores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fs_path(url)
    # A local file is opened by Arrow itself. Read through a Python file object, Arrow can leave cleanup
    # running after read_table returns, which now and then aborts the interpreter at exit ("terminate
    # called without an active exception", exit 134; apache/arrow#33975): measured 3 in 60 runs, 0 in 60.
    with pa.OSFile(path, "rb") if isinstance(fs, LocalFileSystem) else fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns, use_threads=use_threads)


def write_parquet(table, url: str) -> None:
    import pyarrow.parquet as pq

    fs, path = fs_path(url)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def is_file(url: str) -> bool:
    fs, path = fs_path(url)
    return fs.isfile(path)


def parquet_columns(url: str) -> list[str]:
    """A Parquet file's column names, from its footer."""
    import pyarrow.parquet as pq

    fs, path = fs_path(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.names


def move(src: str, dst: str) -> None:
    """Rename a file or a folder. On object storage a folder is a prefix: its objects are copied one by
    one (recursive), and a reader must not take the destination as whole before this returns."""
    fs, s = fs_path(src)
    _, d = fs_path(dst)
    fs.invalidate_cache(s)  # s3fs lists from a cache: objects removed since would be copied (NoSuchKey)
    if "://" in src and not src.startswith("file://") and fs.isdir(s):
        # object by object: s3fs's recursive mv also copies the prefix itself, a key that does not exist
        for f in fs.find(s):
            fs.mv(f, d + f[len(s) :])
        return
    fs.mv(s, d)


def remove(url: str, recursive: bool = False) -> None:
    fs, path = fs_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def glob(pattern: str) -> list[str]:
    """Glob that returns paths in the same form (with protocol) as the pattern."""
    fs, path = fs_path(pattern)
    found = sorted(fs.glob(path))
    proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
    return [proto + p if proto and not p.startswith(proto) else p for p in found]


def file_sha256(url: str, chunk: int = 1 << 20) -> str:
    import hashlib

    fs, path = fs_path(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the source checkout, when the package runs from one."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """What every manifest records about the run that wrote it: when, which code, which packages."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_version(),
        "packages": package_versions(),
    }


def code_version() -> dict[str, Any]:
    from thresher.core import __version__

    return {"thresher": __version__, "git_commit": git_commit()}
