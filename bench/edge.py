#!/usr/bin/env python3
"""Pixel and click throughput of the tracking edge beside nginx, in the same run.

    .venv/bin/python bench/edge.py [--seconds 10] [--connections 64] [--database-url URL]
                                   [--consumer thread|process|after] [--workers N] [--no-pin]
                                   [--server uvicorn|granian]

Starts `mailbeacon serve` on a fresh data folder and nginx (access log on) serving
the same 43-byte GIF and answering `return 302`, and loads each with wrk (64
connections). As issue 11 sets the target, the server and nginx are pinned to the
same single CPU with taskset and wrk to another, so each server has one core and
never shares it with the load generator. With ``--workers N`` (N > 1) nothing is
pinned: the server runs N worker processes and nginx N workers, on all the cores.

A third line shows the ceiling the HTTP server itself sets: ``bench/bare_edge.py``
(an ASGI app that answers the same GIF and 302 and does nothing else) under the
same server (``--server``) with the settings `serve` gives it, pinned the same
way. The edge's work is what separates its line from that one.

Where the journal consumer runs (``--consumer``):

- ``thread`` (what `serve` does by default): a thread of the server process, on the
  server's core and under its interpreter lock;
- ``process``: the server with RUN_INGEST off and `mailbeacon ingest` beside it, a
  process of its own on the same core at lower priority (nice 10), so the edge
  answers first and the consumer catches up when it can;
- ``after``: the server with RUN_INGEST off, and `mailbeacon ingest --once` after the
  loads, timed: the edge's own capacity, and how fast the backlog is stored.

Afterwards the number of events in the database must equal the 200 (pixel) and 302
(click) answers wrk saw, give or take the requests in flight when wrk stopped (at
most one per connection); fewer stored is a lost hit and fails the script.
Needs wrk, nginx and taskset (Debian: apt-get install wrk nginx-light util-linux).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LUA = r"""
local paths = {}
local counts = {}
local threads = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local i = 0
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; other = 0 end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"})
end
function response(status, headers, body)
  if status == %(expect)d then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local total_ok, total_other = 0, 0
  for _, t in ipairs(threads) do total_ok = total_ok + t:get("ok"); total_other = total_other + t:get("other") end
  io.write(string.format("EXPECTED_OK %%d\nOTHER %%d\nP99_US %%d\nRPS %%.1f\n", total_ok, total_other,
    latency:percentile(99), summary.requests / (summary.duration / 1e6)))
end
"""

NGINX_CONF = """
worker_processes %(workers)d;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
  access_log %(dir)s/access.log;
  client_body_temp_path %(dir)s; proxy_temp_path %(dir)s; fastcgi_temp_path %(dir)s;
  uwsgi_temp_path %(dir)s; scgi_temp_path %(dir)s;
  server {
    listen 127.0.0.1:%(port)d;
    location /t/o/ {
      default_type image/gif;
      add_header Cache-Control "no-store, no-cache, must-revalidate, max-age=0";
      root %(dir)s; try_files /pixel.gif =404;
      etag off;
    }
    location /t/c/ {
      add_header Cache-Control "no-store";
      add_header Referrer-Policy "no-referrer";
      return 302 https://example.com/landing;
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback only
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def run_wrk(
    base: str, paths: list[str], expect: int, args: argparse.Namespace, work: Path
) -> dict[str, float]:
    paths_file = work / f"paths-{expect}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    lua = work / f"bench-{expect}.lua"
    lua.write_text(LUA % {"paths": paths_file, "expect": expect})
    out = subprocess.run(
        [
            *getattr(args, "prefix", []),
            "wrk",
            "-t",
            "2",
            "-c",
            str(args.connections),
            "-d",
            f"{args.seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(lua),
            base,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = {
        k: float(v) for k, v in re.findall(r"^(EXPECTED_OK|OTHER|P99_US|RPS) ([\d.]+)$", out, re.M)
    }
    errors = re.search(r"Socket errors: (.*)", out)
    figures["socket_errors"] = (
        0.0 if errors is None else float(sum(int(n) for n in re.findall(r"\d+", errors.group(1))))
    )
    return figures


def prepare(work: Path, database_url: str, copies: int, **env: str) -> tuple[Any, list[int]]:
    """A migrated database in ``work`` (or at ``database_url``) with one preview email of
    ``copies`` recipient copies; the settings are exported to the environment, where the
    servers started next read them. Returns the runtime and the copies' ids."""
    os.environ.update(
        {
            "MAILBEACON_DATA_DIR": str(work / "data"),
            "MAILBEACON_TOO_FAST_SECONDS": "0",
            **({"MAILBEACON_DATABASE_URL": database_url} if database_url else {}),
            **env,
        }
    )
    from mailbeacon.config import Settings
    from mailbeacon.migrate import upgrade
    from mailbeacon.models import CopyStatus, Message, RecipientCopy
    from mailbeacon.runtime import Runtime

    settings = Settings()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url())
    runtime = Runtime.from_settings(settings)
    with runtime.database.unit_of_work() as s:
        message = Message(subject="bench", body_html="<p>x</p>", is_preview=True)
        s.add(message)
        s.flush()
        rows = [
            RecipientCopy(
                message_id=message.id,
                address=f"r{i}@example.org",
                decision="tracked",
                status=CopyStatus.PREVIEW,
            )
            for i in range(copies)
        ]
        s.add_all(rows)
        s.flush()
        return runtime, [c.id for c in rows]


def fdatasync_ms(folder: Path, rounds: int = 200) -> tuple[float, float]:
    """p50 and p99 of one append + fdatasync in ``folder``: what each journal batch waits
    for before its hits are answered, on this disk, now."""
    path = folder / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def nginx_command(work: Path, port: int, workers: int) -> list[str]:
    """nginx serving the edge's two answers on ``port`` (its folder in ``work``)."""
    from mailbeacon.tracking.edge import PIXEL_GIF

    folder = work / "nginx"
    if not folder.exists():
        folder.mkdir()
        # nginx's worker drops to an unprivileged user when started as root.
        work.chmod(0o755)
        folder.chmod(0o755)
        (folder / "pixel.gif").write_bytes(PIXEL_GIF)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF % {"dir": folder, "port": port, "workers": workers})
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(folder)]


def cpu_plan(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """taskset prefixes for the servers and for wrk (empty when not pinning)."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or args.workers > 1 or len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[-1])], ["taskset", "-c", str(cpus[0])]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 120) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=timeout)


def print_figures(results: dict[str, dict[str, dict[str, float]]]) -> None:
    """Each server's line per kind of hit, beside nginx's."""
    print(f"{'':8}{'':12}{'req/s':>10}{'p99 ms':>9}{'x nginx':>9}   other statuses, socket errors")
    for kind in ("pixel", "click"):
        ref = results["nginx"][kind]["RPS"]
        for name, label in (
            ("mailbeacon", "mailbeacon"),
            ("nginx", "nginx"),
            ("ceiling", "bare ASGI"),
        ):
            r = results[name].get(kind)
            if r is None:
                continue
            print(
                f"{kind:8}{label:12}{r['RPS']:>10.0f}{r['P99_US'] / 1000:>9.2f}"
                f"{r['RPS'] / ref:>9.2f}   {int(r['OTHER'])}, {int(r['socket_errors'])}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--copies", type=int, default=5000, help="distinct recipient copies hit")
    parser.add_argument("--database-url", default="", help="default: embedded SQLite")
    parser.add_argument("--consumer", choices=("thread", "process", "after"), default="thread")
    parser.add_argument("--workers", type=int, default=1, help="server and nginx processes")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the bare ASGI app")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: apt-get install wrk nginx-light util-linux")
    server_pin, wrk_pin = cpu_plan(args)

    work = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    runtime, ids = prepare(
        work,
        args.database_url,
        args.copies,
        MAILBEACON_RUN_INGEST="true" if args.consumer == "thread" else "false",
        MAILBEACON_DEMO_SMTP_PORT="0",
    )
    from mailbeacon.tracking.repository import count_events

    with runtime.database.engine.connect() as conn:
        before = count_events(conn)
    paths = {
        200: [f"/t/o/{runtime.codec.mint_open_token(i)}.gif" for i in ids],
        302: [
            f"/t/c/{runtime.codec.mint_click_token(i, 0, 'https://example.com/landing')}"
            for i in ids
        ],
    }
    wrk_args = argparse.Namespace(
        seconds=args.seconds, connections=args.connections, prefix=wrk_pin
    )
    results: dict[str, dict[str, dict[str, float]]] = {"mailbeacon": {}, "nginx": {}, "ceiling": {}}

    # The product: serve (and, with --consumer process, the consumer beside it).
    port = free_port()
    server = subprocess.Popen(
        [
            *server_pin,
            str(BIN / "mailbeacon"),
            "serve",
            "--port",
            str(port),
            "--no-migrate",
            "--workers",
            str(args.workers),
            "--server",
            args.server,
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    consumer = None
    if args.consumer == "process":
        consumer = subprocess.Popen(
            [*server_pin, "nice", "-n", "10", str(BIN / "mailbeacon"), "ingest"], cwd=ROOT
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        base = f"http://127.0.0.1:{port}"
        for kind, expect in (("pixel", 200), ("click", 302)):
            results["mailbeacon"][kind] = run_wrk(base, paths[expect], expect, wrk_args, work)
    finally:
        # Graceful: the journal is closed and (thread) the consumer stores what it holds.
        stop(server)
    drain_seconds = None
    if consumer is not None:
        stop(consumer)  # graceful too: it stores the journal before it exits
    if args.consumer == "after":
        started = time.perf_counter()
        subprocess.run([str(BIN / "mailbeacon"), "ingest", "--once"], cwd=ROOT, check=True)
        drain_seconds = time.perf_counter() - started

    # The references, pinned alike: nginx, and the HTTP server with nothing behind it.
    nport = free_port()
    references = [
        ("nginx", [*server_pin, *nginx_command(work, nport, args.workers)], signal.SIGQUIT)
    ]
    if not args.no_ceiling:
        cport = free_port()
        references.append(
            (
                "ceiling",
                [
                    *server_pin,
                    str(BIN / "python"),
                    str(ROOT / "bench" / "bare_edge.py"),
                    "--port",
                    str(cport),
                    "--workers",
                    str(args.workers),
                    "--server",
                    args.server,
                ],
                signal.SIGINT,
            )
        )
    for name, command, sig in references:
        ref_port = nport if name == "nginx" else cport
        proc = subprocess.Popen(command, cwd=work)
        try:
            wait_http(f"http://127.0.0.1:{ref_port}/t/o/x.gif")
            for kind, expect in (("pixel", 200), ("click", 302)):
                target = ["/t/o/x.gif" if kind == "pixel" else "/t/c/x"]
                results[name][kind] = run_wrk(
                    f"http://127.0.0.1:{ref_port}", target, expect, wrk_args, work
                )
        finally:
            stop(proc, sig, timeout=30)

    with runtime.database.engine.connect() as conn:
        stored = count_events(conn) - before
    answered = sum(int(r["EXPECTED_OK"]) for r in results["mailbeacon"].values())
    sync_p50, sync_p99 = fdatasync_ms(work)
    pinning = (
        f"server and references on CPU {server_pin[-1]}, wrk on CPU {wrk_pin[-1]}"
        if server_pin
        else "not pinned"
    )
    print(
        f"\nbackend: {runtime.database.engine.dialect.name}; {args.connections} connections; "
        f"{args.seconds}s per load; {args.workers} worker(s) each; {pinning}; "
        f"server: {args.server}; consumer: {args.consumer}"
    )
    print_figures(results)
    print(
        f"the disk now: append + fdatasync p50 {sync_p50:.2f} ms, p99 {sync_p99:.2f} ms "
        "(every answer waits for one, and for the rest of the one in progress)"
    )
    if drain_seconds is not None:
        print(
            f"consumer after the loads: {stored} hits stored in {drain_seconds:.1f} s "
            f"({stored / drain_seconds:,.0f} hits/s, process start and migrations check included)"
        )
    # wrk stops with up to one request per connection in flight: the edge may
    # have stored those hits without wrk reading the answer, so stored can exceed
    # answered by at most the number of connections. Fewer stored is a loss.
    lost = max(0, answered - stored)
    print(
        f"events stored: {stored}; answered 200/302 seen by wrk: {answered}; "
        f"in flight at stop: {stored - answered if stored >= answered else 0}; lost: {lost}"
    )
    runtime.database.dispose()
    shutil.rmtree(work, ignore_errors=True)
    return 0 if lost == 0 and stored - answered <= 2 * args.connections * args.workers else 1


if __name__ == "__main__":
    raise SystemExit(main())
