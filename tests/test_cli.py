"""The `mailbeacon` command from outside: instrument, serve, hit, inspect, rotate keys."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "mailbeacon"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
EMAIL = (
    b'<!DOCTYPE html>\n<html><head><meta charset="iso-8859-1"></head>\n<body>'
    b'<p>Caf\xe9 &amp; more: <a href="https://example.com/offer?a=1&amp;b=2">offer</a>'
    b' <a href="mailto:me@example.com">mail me</a></p>\n</body></html>\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    def __init__(self, data_dir: Path, db_url: str, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = {
            **os.environ,
            "MAILBEACON_DATA_DIR": str(data_dir),
            "MAILBEACON_DATABASE_URL": db_url,
            "MAILBEACON_BASE_URL": f"http://127.0.0.1:{port}",
            "MAILBEACON_TOO_FAST_SECONDS": "0",
            "MAILBEACON_DEMO_SMTP_PORT": "0",
            "MAILBEACON_RUN_WORKER": "false",
        }

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            check=True,
            timeout=60,
        )

    @contextmanager
    def serving(self) -> Iterator[None]:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.get("/healthz")
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            proc.stderr.read().decode() if proc.stderr else ""
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stderr:
                proc.stderr.close()

    def get(self, path: str, method: str = "GET") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, headers={"User-Agent": THUNDERBIRD})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    return Cli(tmp_path / "data", db_url, free_port())


def tracked_paths(body: bytes) -> tuple[str, list[str]]:
    pixel = re.search(rb'src="http://127\.0\.0\.1:\d+(/t/o/[^"]+)"', body)
    links = re.findall(rb'href="http://127\.0\.0\.1:\d+(/t/c/[^"]+)"', body)
    assert pixel is not None
    return pixel.group(1).decode(), [link.decode() for link in links]


def test_instrument_serve_hit_and_read_the_events(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "email.html"
    source.write_bytes(EMAIL)
    out = cli.run("instrument", str(source), "--to", "ann@example.org").stdout
    # Printed in the file's own encoding; only the link and the pixel changed.
    assert b"Caf\xe9 &amp; more" in out and b'href="mailto:me@example.com"' in out
    assert out.startswith(b'<!DOCTYPE html>\n<html><head><meta charset="iso-8859-1"></head>')
    pixel, links = tracked_paths(out)
    assert len(links) == 1
    with cli.serving():
        r = cli.get(pixel)
        assert r.status == 200 and r.getheader("Content-Type") == "image/gif"
        r = cli.get(links[0])
        assert r.status == 302
        assert r.getheader("Location") == "https://example.com/offer?a=1&b=2"
        assert cli.get(links[0][:-2]).status == 404
    assert cli.run("events", "--count").stdout.strip() == b"2"
    events = [json.loads(line) for line in cli.run("events", "--limit", "5").stdout.splitlines()]
    assert [(e["kind"], e["label"]) for e in events] == [("click", "human"), ("open", "human")]
    assert all(e["ip_prefix"] == "127.0.0.0/24" for e in events)
    assert "Thunderbird" in events[1]["reason"]


def test_plain_text_gets_links_but_no_pixel_and_empty_bodies_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    text = tmp_path / "note.txt"
    text.write_text("See (https://example.com/a_(b)) or <https://example.com/x>.\n")
    out = cli.run("instrument", str(text), "--text").stdout
    assert b"/t/o/" not in out
    assert out.count(b"/t/c/") == 2
    assert out.startswith(b"See (http://127.0.0.1:") and out.endswith(b">.\n")
    empty = tmp_path / "empty.html"
    empty.write_bytes(b"<html><body>\n  &nbsp; <a href='https://example.com/'></a></body></html>")
    result = cli.run("instrument", str(empty))
    assert result.stdout == empty.read_bytes()
    assert b"empty_body" in result.stderr


def test_a_new_key_keeps_old_links_and_removing_it_breaks_them(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "email.html"
    source.write_bytes(EMAIL)
    _, (old_link,) = tracked_paths(cli.run("instrument", str(source)).stdout)
    assert b"added key 2" in cli.run("keys", "add").stdout
    _, (new_link,) = tracked_paths(cli.run("instrument", str(source)).stdout)
    assert old_link != new_link
    with cli.serving():
        assert cli.get(old_link).status == 302
        assert cli.get(new_link).status == 302
    cli.run("keys", "remove", "1")
    with cli.serving():
        assert cli.get(old_link).status == 404
        assert cli.get(new_link).status == 302


def test_classify_explains_a_verdict(cli: Cli) -> None:
    proxy = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    verdict = json.loads(cli.run("classify", "--kind", "open", "--ua", proxy, "--json").stdout)
    assert verdict["label"] == "image_proxy"
    out = cli.run("classify", "--kind", "open", "--ua", THUNDERBIRD, "--head").stdout.decode()
    assert out.startswith("prefetch\t")
    out = cli.run("classify", "--kind", "click", "--ua", THUNDERBIRD, "--seconds-after-send", "1")
    assert out.stdout.decode().startswith("human\t")  # TOO_FAST_SECONDS is 0 here


def test_refreshed_network_ranges_change_what_classify_says(cli: Cli, tmp_path: Path) -> None:
    ranges = tmp_path / "gateway.txt"
    ranges.write_text("# a security gateway's published ranges\n198.51.100.0/24\n")
    refreshed = cli.run("networks", "refresh", "--source", f"proofpoint={ranges}")
    assert b"proofpoint\t1 ranges" in refreshed.stdout
    argv = ["classify", "--kind", "click", "--ua", THUNDERBIRD, "--json"]
    inside = json.loads(cli.run(*argv, "--ip", "198.51.100.20").stdout)
    outside = json.loads(cli.run(*argv, "--ip", "203.0.113.20").stdout)
    assert inside["label"] == "scanner" and "roofpoint" in inside["reason"]
    assert outside["label"] == "human"
    missing = subprocess.run(
        [str(BIN), "networks", "refresh", "--source", f"apple={tmp_path / 'nope.csv'}"],
        env=cli.env,
        capture_output=True,
        check=False,
    )
    assert missing.returncode == 1 and b"nope.csv" in missing.stderr
    # The failed source left the earlier list in place.
    assert json.loads(cli.run(*argv, "--ip", "198.51.100.20").stdout)["label"] == "scanner"


def _call(port: int, method: str, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        method,
        path,
        body=b"name=more&scopes=admin" if method == "POST" else None,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def test_token_create_prints_a_token_that_may_do_only_what_it_says(cli: Cli) -> None:
    cli.run(
        "user", "create", "--email", "sally@example.com", "--password-stdin",
        stdin=b"a long enough password\n",
    )  # fmt: skip
    made = cli.run(
        "token", "create", "--email", "Sally@Example.com", "--scopes", "read,send",
        "--name", "CRM sync", "--expires-days", "30",
    )  # fmt: skip
    token = made.stdout.decode().strip()
    assert re.fullmatch(r"mb_[A-Za-z0-9_-]{43}", token)
    assert b"token for sally@example.com may: read, send; until 20" in made.stderr
    with cli.serving():
        assert _call(cli.port, "GET", "/api/me", token) == 200
        # Not admin: it cannot mint itself a stronger token.
        assert _call(cli.port, "POST", "/settings/api-tokens", token) == 403
    for args, words in (
        (["--email", "nobody@example.com"], b"there is no user nobody@example.com"),
        (["--email", "sally@example.com", "--scopes", "read,root"], b"no scope 'root'"),
        (["--email", "sally@example.com", "--expires-days", "0"], b"between 1 and"),
    ):
        refused = subprocess.run(
            [str(BIN), "token", "create", *args],
            env=cli.env,
            capture_output=True,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        assert words in refused.stderr
        assert refused.stdout == b""
