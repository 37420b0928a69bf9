#!/usr/bin/env python3
"""The tracking edge under uvicorn and under granian, beside nginx, in the same run.

    .venv/bin/python bench/edge_servers.py [--rounds 5] [--seconds 5] [--connections 64]
                                           [--database-url URL] [--no-pin]

Serves the very same application (``mailbeacon.asgi:app_factory``, one worker
process, uvloop, no access log) with uvicorn and with granian, and nginx (one
worker) answering the same GIF and ``return 302`` as the reference. Each round
starts every server afresh, in a rotating order, and loads the pixel then the
click with wrk; the medians over the rounds are printed, with every round's
figures, since the machine may be shared. After each server stops (a graceful
stop drains the journal), the events it stored are compared with the 200/302
answers wrk saw: fewer stored is a lost hit and fails the script.

On a machine with two or more CPUs the server is pinned to the last CPU and wrk
to the first (``taskset``, util-linux), so the two never take turns on one core.

Needs wrk, nginx and taskset (Debian: ``apt-get install -y wrk nginx-light
util-linux``) and granian (``.venv/bin/pip install -c constraints.txt -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edge import free_port, nginx_command, prepare, run_wrk, wait_http

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVERS = ("uvicorn", "granian", "nginx")
NGINX_PATHS = {200: "/t/o/x.gif", 302: "/t/c/x"}


def server_command(name: str, port: int, work: Path) -> list[str]:
    if name == "uvicorn":
        # What `mailbeacon serve --server uvicorn` runs (cli.py), as a command line.
        return [
            str(BIN / "uvicorn"),
            "--factory",
            "mailbeacon.asgi:app_factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-proxy-headers",
            "--no-server-header",
            "--no-date-header",
            "--log-level",
            "warning",
        ]
    if name == "granian":
        return [
            str(BIN / "granian"),
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "mailbeacon.asgi:app_factory",
        ]
    return nginx_command(work, port, 1)


def pinned(command: list[str], cpu: int | None) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--copies", type=int, default=5000, help="distinct recipient copies hit")
    parser.add_argument("--database-url", default="", help="default: embedded SQLite")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--consumer",
        choices=("thread", "after"),
        default="thread",
        help="the journal consumer in the server (as serve runs it), or after each load",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx-light util-linux")
    if shutil.which("granian", path=str(BIN)) is None:
        raise SystemExit(
            "granian is missing: .venv/bin/pip install -c constraints.txt -e '.[bench]'"
        )
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = wrk_cpu = None
    if not args.no_pin and len(cpus) >= 2:
        wrk_cpu, server_cpu = cpus[0], cpus[-1]
        # wrk inherits this process's CPU; each server is started under taskset.
        os.sched_setaffinity(0, {wrk_cpu})

    work = Path(tempfile.mkdtemp(prefix="mb-bench-servers-"))
    runtime, ids = prepare(
        work,
        args.database_url,
        args.copies,
        MAILBEACON_DEMO_SMTP_PORT="0",
        MAILBEACON_MIGRATE_ON_START="false",
        MAILBEACON_RUN_INGEST="true" if args.consumer == "thread" else "false",
    )
    from mailbeacon.tracking.repository import count_events

    paths = {
        200: [f"/t/o/{runtime.codec.mint_open_token(i)}.gif" for i in ids],
        302: [
            f"/t/c/{runtime.codec.mint_click_token(i, 0, 'https://example.com/landing')}"
            for i in ids
        ],
    }

    wrk_args = argparse.Namespace(seconds=args.seconds, connections=args.connections)
    # results[server][kind] -> list of (rps, p99 ms), one per round
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {"pixel": [], "click": []} for name in SERVERS
    }
    lost_total = 0
    print(
        f"backend: {runtime.database.engine.dialect.name}; {args.connections} connections; "
        f"{args.seconds}s per load; server on CPU {server_cpu}, wrk on CPU {wrk_cpu}; "
        f"consumer: {args.consumer}",
        flush=True,
    )
    for round_no in range(args.rounds):
        order = SERVERS[round_no % 3 :] + SERVERS[: round_no % 3]
        for name in order:
            port = free_port()
            with runtime.database.engine.connect() as conn:
                before = count_events(conn)
            proc = subprocess.Popen(
                pinned(server_command(name, port, work), server_cpu),
                cwd=work,
            )
            answered = 0
            try:
                wait_http(f"http://127.0.0.1:{port}/t/o/x.gif", timeout=60)
                base = f"http://127.0.0.1:{port}"
                for kind, expect in (("pixel", 200), ("click", 302)):
                    targets = paths[expect] if name != "nginx" else [NGINX_PATHS[expect]]
                    figures = run_wrk(base, targets, expect, wrk_args, work)
                    results[name][kind].append((figures["RPS"], figures["P99_US"] / 1000))
                    if name != "nginx":
                        answered += int(figures["EXPECTED_OK"])
                    print(
                        f"round {round_no + 1} {name:8} {kind:6} {figures['RPS']:>8.0f} req/s "
                        f"p99 {figures['P99_US'] / 1000:>7.2f} ms  (other statuses: "
                        f"{int(figures['OTHER'])}, socket errors: {int(figures['socket_errors'])})",
                        flush=True,
                    )
            finally:
                # Graceful: SIGINT for the Python servers (lifespan shutdown closes the
                # journal and the consumer stores what it holds), SIGQUIT for nginx.
                proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGINT)
                proc.wait(timeout=120)
            if name != "nginx":
                if args.consumer == "after":
                    subprocess.run(
                        [str(BIN / "mailbeacon"), "ingest", "--once"], cwd=ROOT, check=True
                    )
                with runtime.database.engine.connect() as conn:
                    stored = count_events(conn) - before
                lost = max(0, answered - stored)
                lost_total += lost
                if lost or stored - answered > 2 * args.connections:
                    print(f"  {name}: stored {stored}, answered {answered}: LOST {lost}")

    print("\nmedians over", args.rounds, "rounds")
    print(f"{'':10}{'pixel req/s':>12}{'p99 ms':>9}{'click req/s':>13}{'p99 ms':>9}")
    medians: dict[str, dict[str, float]] = {}
    for name in SERVERS:
        m = {
            f"{kind}_{what}": statistics.median(r[i] for r in results[name][kind])
            for kind in ("pixel", "click")
            for i, what in enumerate(("rps", "p99"))
        }
        medians[name] = m
        print(
            f"{name:10}{m['pixel_rps']:>12.0f}{m['pixel_p99']:>9.2f}"
            f"{m['click_rps']:>13.0f}{m['click_p99']:>9.2f}"
        )
    for kind in ("pixel", "click"):
        ratios = [
            g[0] / u[0]
            for g, u in zip(results["granian"][kind], results["uvicorn"][kind], strict=True)
        ]
        print(
            f"granian/uvicorn {kind}: median of per-round ratios {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}); "
            f"uvicorn/nginx {medians['uvicorn'][f'{kind}_rps'] / medians['nginx'][f'{kind}_rps']:.2f}, "
            f"granian/nginx {medians['granian'][f'{kind}_rps'] / medians['nginx'][f'{kind}_rps']:.2f}"
        )
    print(f"hits lost: {lost_total}")
    runtime.database.dispose()
    shutil.rmtree(work, ignore_errors=True)
    return 0 if lost_total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
