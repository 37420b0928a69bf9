"""The README's ten-line receiver runs as written and verifies a real mailbeacon webhook
(only its secret and its address are filled in)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from mailbeacon.models import User
from mailbeacon.runtime import Runtime
from mailbeacon.webhooks.service import webhook_service
from tests.factories.accounts import make_demo_sender
from tests.network import closed_port
from tests.webhooks.conftest import add_endpoint

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_receiver() -> str:
    text = README.read_text()
    found = re.search(r"<!-- webhook-receiver:[^\n]*-->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "the README lost its receiver"
    return found.group(1)


def test_the_readme_receiver_is_ten_lines_of_code() -> None:
    lines = [line for line in readme_receiver().splitlines() if line.strip()]
    assert len(lines) == 10


@pytest.mark.asyncio
async def test_the_readme_receiver_verifies_a_test_event(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    port = closed_port()
    endpoint_id, secret = add_endpoint(runtime, uid, f"http://127.0.0.1:{port}/", ["copy.opened"])
    code = readme_receiver().replace('"whsec_..."', repr(secret))
    code = code.replace('("", 8080)', f'("127.0.0.1", {port})')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        worker = runtime.make_webhook_worker()
        with runtime.database.unit_of_work() as s:
            user = s.get(User, uid)
            assert user is not None
            webhook_id = webhook_service.send_test(s, user, endpoint_id)
        for _ in range(100):  # until the receiver listens and answers
            await worker.run_once()
            if worker.stats["delivered"]:
                break
            await asyncio.sleep(0.1)
        assert worker.stats["delivered"] == 1
    finally:
        process.terminate()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    out, err = stdout.decode(), stderr.decode()
    assert out.startswith("webhook.test {"), (out, err)
    assert webhook_id and "POST / HTTP" in err  # the handler's own log of the request
