"""A real multi-node Ray cluster on loopback, for the tests (not a test module itself).

Run inside a private network namespace that has only `lo` (`unshare -n`, as root): nothing it
does can leave loopback, whatever address Ray picks. It starts a head and NODES - 1 more nodes
with `ray start` (one CPU each, a temp folder of their own), prints `ready` once every node has
joined, and waits until its stdin closes (or SIGTERM). It is the child subreaper of everything
`ray start` daemonises, so at the end it ends exactly those processes -- its own descendants, by
pid -- and reaps them. Never `ray stop`, never a kill by name.

    unshare -n -- python tests/ray_cluster.py PORT NODES TEMP_DIR
    unshare -n -- python tests/ray_cluster.py run COMMAND...   (one command on loopback only, e.g. a
                                                                driver that starts its own Ray; what it
                                                                leaves running is ended the same way)
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (children before their parents' parents)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found.extend(kids)
        frontier.extend(kids)
    return found


def end_all() -> None:
    """SIGTERM every descendant, SIGKILL what is left after 5 s, and reap them all."""
    me = os.getpid()
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = descendants(me)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            if not descendants(me):
                return
            time.sleep(0.1)
    reap()


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def driver_env(temp: str) -> dict[str, str]:
    """What a process needs in its environment to use the cluster whose temp folder is `temp`."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.path.join(temp, "token"),
            "RAY_USAGE_STATS_ENABLED": "0"}


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("cannot become a child subreaper")
    signal.signal(signal.SIGTERM, lambda *_: (end_all(), os._exit(0)))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if sys.argv[1] == "run":
        try:
            code = subprocess.run(sys.argv[2:]).returncode
        finally:
            end_all()
        raise SystemExit(code)
    port, nodes, temp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # token authentication (Ray's coming default) with a token of this cluster's, in its own folder:
    # drivers are given RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=TEMP_DIR/token (see `driver_env`)
    with open(os.path.join(temp, "token"), "w") as f:
        f.write(secrets.token_hex(32))
    env = {**os.environ, **driver_env(temp)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "env": env, "check": True}
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                        *common], **quiet)
        for _ in range(nodes - 1):
            subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", *common], **quiet)
        probe = ("import ray, time, sys\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
                 "t = time.time()\nwhile len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]):\n"
                 "    assert time.time() - t < 60, 'nodes did not join'\n    time.sleep(0.2)\n")
        subprocess.run([sys.executable, "-c", probe, f"127.0.0.1:{port}", str(nodes)], **quiet)
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc.cmd[:3]}: {exc.stderr.decode(errors='replace')[-2000:]}", flush=True)
        end_all()
        raise SystemExit(1) from None
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        end_all()


if __name__ == "__main__":
    main()
