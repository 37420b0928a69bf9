#!/usr/bin/env python3
"""Pixel and click throughput of the tracking edge beside nginx, in the same run.

    .venv/bin/python bench/edge.py [--seconds 10] [--connections 64] [--database-url URL]

Starts `mailbeacon serve` (one worker) on a fresh data folder, loads it with wrk
(64 connections), then loads nginx (one worker, access log on) serving the same
43-byte GIF and answering `return 302`. Afterwards it checks that the database
holds exactly as many events as the edge answered with 200 (pixel) or 302 (click).
Needs `wrk` and `nginx` (Debian: apt-get install wrk nginx-light).
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
worker_processes 1;
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--copies", type=int, default=5000, help="distinct recipient copies hit")
    parser.add_argument("--database-url", default="", help="default: embedded SQLite")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: apt-get install wrk nginx-light")

    work = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    runtime, ids = prepare(work, args.database_url, args.copies)
    from mailbeacon.tracking.edge import PIXEL_GIF
    from mailbeacon.tracking.repository import count_events

    with runtime.database.engine.connect() as conn:
        before = count_events(conn)
    pixel_paths = [f"/t/o/{runtime.codec.mint_open_token(i)}.gif" for i in ids]
    click_paths = [
        f"/t/c/{runtime.codec.mint_click_token(i, 0, 'https://example.com/landing')}" for i in ids
    ]

    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mailbeacon"),
            "serve",
            "--port",
            str(port),
            "--no-migrate",
            "--log-level",
            "info",
        ],
        cwd=ROOT,
    )
    nginx_dir = work / "nginx"
    nginx_dir.mkdir()
    # nginx's worker drops to an unprivileged user when started as root.
    work.chmod(0o755)
    nginx_dir.chmod(0o755)
    (nginx_dir / "pixel.gif").write_bytes(PIXEL_GIF)
    nport = free_port()
    (nginx_dir / "nginx.conf").write_text(NGINX_CONF % {"dir": nginx_dir, "port": nport})
    nginx = subprocess.Popen(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-c",
            str(nginx_dir / "nginx.conf"),
            "-p",
            str(nginx_dir),
        ]
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{nport}/t/o/x.gif")
        results = {}
        for name, paths, expect in (("pixel", pixel_paths, 200), ("click", click_paths, 302)):
            ours = run_wrk(f"http://127.0.0.1:{port}", paths, expect, args, work)
            ref = run_wrk(
                f"http://127.0.0.1:{nport}",
                ["/t/o/x.gif" if name == "pixel" else "/t/c/x"],
                expect,
                args,
                work,
            )
            results[name] = (ours, ref)
    finally:
        server.send_signal(signal.SIGINT)  # graceful: the consumer stores what the journal holds
        server.wait(timeout=60)
        nginx.terminate()
        nginx.wait(timeout=10)

    with runtime.database.engine.connect() as conn:
        stored = count_events(conn) - before
    answered = sum(int(ours["EXPECTED_OK"]) for ours, _ in results.values())
    print(
        f"\nbackend: {runtime.database.engine.dialect.name}, {args.connections} connections, "
        f"{args.seconds}s per run, one worker each"
    )
    print(
        f"{'':8}{'mailbeacon req/s':>18}{'p99 ms':>9}{'nginx req/s':>14}{'p99 ms':>9}{'ratio':>8}"
    )
    for name, (ours, ref) in results.items():
        print(
            f"{name:8}{ours['RPS']:>18.0f}{ours['P99_US'] / 1000:>9.2f}{ref['RPS']:>14.0f}"
            f"{ref['P99_US'] / 1000:>9.2f}{ours['RPS'] / ref['RPS']:>8.2f}"
            f"   (other statuses: {int(ours['OTHER'])}, socket errors: {int(ours['socket_errors'])})"
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
    return 0 if lost == 0 and stored - answered <= 2 * args.connections else 1


if __name__ == "__main__":
    raise SystemExit(main())
