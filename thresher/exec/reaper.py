"""The reaper of a local Ray instance (issue 25), started by `execute.init_ray`: when the command dies,
however (`kill -9` included), every process it started dies with it.

Ray ties its GCS and raylet to the driver (the kernel kills them when it dies), but not the raylet's
agents. When the raylet goes, DashboardAgent and RuntimeEnvAgent report its death to the GCS, which is
gone too, and wait 60 s on that call before they exit: a `kill -9` of a command left them for 60-73 s.

The reaper reads a pipe only the driver holds. Every 2 s it notes the processes below the driver (Ray's
agents and workers, whoever started them); when the pipe ends, the driver is gone, and it SIGKILLs
those still alive (a reused pid is told apart by its start time).

Run as a script (`python -I reaper.py`, its stdin the pipe), never imported by the pipeline: it needs
nothing but the standard library and Linux's /proc.
"""

from __future__ import annotations

import os
import select
import signal

LOOK_S = 2.0


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            out[int(name)] = (int(fields[1]), fields[19])
        except (OSError, ValueError, IndexError):
            pass
    return out


def below(root: int, procs: dict[int, tuple[int, str]], skip: int) -> dict[int, str]:
    """pid -> start time of every process below `root`, except `skip` (this reaper)."""
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in procs.items():
            if ppid == parent and pid != skip and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def main() -> None:
    # what stops the command's group stops the driver too, and then the pipe ends: reap, do not die
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    driver, me = os.getppid(), os.getpid()
    seen: dict[int, str] = {}
    while True:
        seen.update(below(driver, processes(), me))
        if select.select([0], [], [], LOOK_S)[0] and not os.read(0, 4096):
            break  # the driver's end is closed: it is gone
    now = processes()
    for pid, start in seen.items():
        if pid in now and now[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main()
