"""`mailbeacon sync`, the sync worker on its own: one pass with ``--once``, and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import MailboxConnection, Message, SyncState
from mailbeacon.runtime import Runtime
from tests.factories.mail import send_mail
from tests.sync.dovecot import Account, DovecotServer, append_messages
from tests.sync.harness import copies, make_imap_sender, reply_bytes

BIN = Path(sys.executable).parent / "mailbeacon"


def sync_once(data_dir: Path, db_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAILBEACON_")},
        "MAILBEACON_DATA_DIR": str(data_dir),
        "MAILBEACON_DATABASE_URL": db_url,
        "MAILBEACON_ALLOW_LOOPBACK_MAIL_SERVERS": "true",
    }
    return subprocess.run(
        [str(BIN), "sync", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sync_once_reads_the_mailbox_and_says_what_it_found(
    tmp_path: Path, db_url: str, database: Database, dovecot: DovecotServer, account: Account
) -> None:
    data_dir = tmp_path / "data"
    # The data folder's credentials key seals the password; the command opens it.
    runtime = Runtime.from_settings(Settings(DATA_DIR=data_dir, DATABASE_URL=db_url))
    try:
        user = make_imap_sender(database, runtime, dovecot, account)
        sent = send_mail(database, runtime, user, ("carla@example.org",))
    finally:
        runtime.database.dispose()
    with database.sessions() as s:
        header = s.get_one(Message, sent.message_id).message_id_header
    append_messages(
        dovecot,
        account,
        "INBOX",
        [reply_bytes(sender="carla@example.org", to="x@example.com", subject="Re: Our offer",
                     in_reply_to=header)],
    )  # fmt: skip

    done = sync_once(data_dir, db_url)
    assert done.returncode == 0, done.stderr
    assert "1 mailbox(es) read, 1 new message(s), 1 stored" in done.stderr
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 1

    # A mailbox that cannot be reached: said, and the exit code says so too.
    with database.unit_of_work() as s:
        s.execute(update(MailboxConnection).values(imap_port=1))
        s.execute(update(SyncState).values(next_attempt_at=None))
    done = sync_once(data_dir, db_url)
    assert done.returncode == 1
    assert "1 failure(s)" in done.stderr
