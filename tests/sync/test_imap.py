"""The IMAP client against a real Dovecot on loopback: every operation the sync needs."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import imapclient
import pytest

from mailbeacon.kit.netpolicy import AddressPolicy
from mailbeacon.models.mailbox import Security
from mailbeacon.sync.imap import (
    SEEN,
    AddressNotAllowed,
    CannotConnect,
    ConnectionLost,
    FetchPart,
    FolderMissing,
    ImapMailbox,
    ImapSettings,
    Stage,
    TlsFailed,
    UidValidityChanged,
    WrongPassword,
    normalise_message_id,
    open_mailbox,
    test_imap_connection,
)
from tests.network import SSH_BANNER, ConnectionLog, HostTable, fake_service
from tests.sync.conftest import LOOPBACK_ALLOWED, settings_for
from tests.sync.dovecot import (
    Account,
    DovecotServer,
    append_messages,
    start_dovecot,
    write_maildir_messages,
)


def message(n: int, *, message_id: str | None = None, subject: str | None = None) -> bytes:
    mid = message_id or f"<m{n}@sender.test>"
    return (
        f"From: Alice Example <alice@sender.test>\r\n"
        f"To: bob@mb.test\r\n"
        f"Subject: {subject or f'Message {n}'}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: {mid}\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
        f"Body of message {n}.\r\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- connecting and signing in ------------------------------------------------------


def test_signs_in_over_plain_imap_on_loopback(dovecot: DovecotServer, account: Account) -> None:
    result = test_imap_connection(settings_for(dovecot, account, Security.NONE))
    assert result.ok and result.stage == Stage.OK
    assert account.username in result.message


def test_wrong_password_fails_at_the_sign_in_stage_in_plain_words(
    dovecot: DovecotServer, account: Account
) -> None:
    settings = settings_for(dovecot, account, Security.TLS, password="not the password")
    with pytest.raises(WrongPassword) as caught:
        open_mailbox(settings)
    assert caught.value.stage == Stage.AUTH and not caught.value.temporary
    result = test_imap_connection(settings)
    assert (result.ok, result.stage) == (False, Stage.AUTH)
    assert result.message.endswith("refused the user name or password.")
    # Dovecot's own wording ("Authentication failed.") is not passed on.
    assert "Authentication failed" not in result.message


def test_unknown_user_looks_like_a_wrong_password(dovecot: DovecotServer, account: Account) -> None:
    ghost = replace(account, username="nobody-here@mb.test")
    result = test_imap_connection(settings_for(dovecot, ghost))
    assert (result.ok, result.stage) == (False, Stage.AUTH)


def test_implicit_tls_verifies_the_fixture_certificate(
    dovecot: DovecotServer, account: Account
) -> None:
    with open_mailbox(settings_for(dovecot, account, Security.TLS)) as mailbox:
        assert mailbox.find_sent_folder() == "Sent"
    result = test_imap_connection(settings_for(dovecot, account, Security.TLS))
    assert result.ok and "over TLS" in result.message


def test_starttls_upgrades_the_plain_port_with_the_fixture_certificate(
    dovecot: DovecotServer, account: Account
) -> None:
    with open_mailbox(settings_for(dovecot, account, Security.STARTTLS)) as mailbox:
        assert mailbox.select("INBOX").exists == 0
    result = test_imap_connection(settings_for(dovecot, account, Security.STARTTLS))
    assert result.ok and "with STARTTLS" in result.message


@pytest.mark.parametrize("security", [Security.TLS, Security.STARTTLS])
def test_a_certificate_the_system_does_not_trust_is_refused(
    dovecot: DovecotServer, account: Account, security: Security
) -> None:
    # No custom context: production verification against the system trust store.
    settings = replace(settings_for(dovecot, account, security), ssl_context=None)
    with pytest.raises(TlsFailed, match="not signed by an authority"):
        open_mailbox(settings)
    result = test_imap_connection(settings)
    assert (result.ok, result.stage) == (False, Stage.TLS)


def test_tls_spoken_to_the_plain_port_is_a_tls_failure(
    dovecot: DovecotServer, account: Account
) -> None:
    settings = replace(settings_for(dovecot, account, Security.TLS), port=dovecot.imap_port)
    result = test_imap_connection(settings)
    assert (result.ok, result.stage) == (False, Stage.TLS)
    assert "the TLS handshake did not complete" in result.message


def test_plain_imap_to_the_tls_port_times_out_with_a_hint(
    dovecot: DovecotServer, account: Account
) -> None:
    settings = replace(
        settings_for(dovecot, account, Security.NONE, timeout=0.5), port=dovecot.imaps_port
    )
    result = test_imap_connection(settings)
    assert (result.ok, result.stage) == (False, Stage.CONNECT)
    assert "implicit TLS" in result.message


def test_no_encryption_is_refused_for_a_remote_host_before_connecting(
    hosts: HostTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = ConnectionLog()
    connections.install(monkeypatch)
    # A public address (nothing is sent there); "localhost" made to point at it is
    # judged by where it points.
    hosts.add("imap.example.com", "93.184.215.14")
    hosts.add("localhost", "93.184.215.14")
    for host in ("imap.example.com", "localhost"):
        settings = ImapSettings(host, 143, Security.NONE, "u", "p", timeout=0.1)
        with pytest.raises(TlsFailed, match="only allowed to this machine"):
            open_mailbox(replace(settings, policy=LOOPBACK_ALLOWED))
    assert connections.attempts == []


def test_server_down_is_a_clear_connect_error() -> None:
    settings = ImapSettings(
        "127.0.0.1", free_port(), Security.TLS, "u", "p", timeout=2, policy=LOOPBACK_ALLOWED
    )
    result = test_imap_connection(settings)
    assert (result.ok, result.stage) == (False, Stage.CONNECT)
    assert "nothing answered, or the connection was refused" in result.message
    with pytest.raises(CannotConnect) as caught:
        open_mailbox(settings)
    assert caught.value.temporary


def test_no_result_repeats_the_server_greeting(dovecot: DovecotServer, account: Account) -> None:
    cases = [
        settings_for(dovecot, account, Security.NONE),
        settings_for(dovecot, account, Security.TLS, password="wrong"),
        replace(settings_for(dovecot, account, Security.TLS), ssl_context=None),
    ]
    for settings in cases:
        assert "Dovecot" not in test_imap_connection(settings).message


def test_a_loopback_server_is_refused_by_default_before_connecting(
    dovecot: DovecotServer, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = ConnectionLog()
    connections.install(monkeypatch)
    for security in (Security.NONE, Security.TLS):
        settings = replace(settings_for(dovecot, account, security), policy=AddressPolicy())
        with pytest.raises(AddressNotAllowed) as caught:
            open_mailbox(settings)
        assert not caught.value.temporary
        result = test_imap_connection(settings)
        assert (result.ok, result.stage) == (False, Stage.CONNECT)
        assert result.message == (
            "This address is this machine itself (loopback); the operator has not allowed "
            "mail servers on this machine."
        )
    assert connections.attempts == []


@pytest.mark.parametrize("security", [Security.NONE, Security.STARTTLS, Security.TLS])
def test_a_service_that_is_not_imap_reads_like_a_silent_one(security: Security) -> None:
    """An SSH daemon and a port that never answers get the same fixed sentence."""
    answers = []
    for banner in (SSH_BANNER, None):
        with fake_service(banner) as port:
            result = test_imap_connection(
                ImapSettings(
                    "127.0.0.1", port, security, "u", "p", timeout=1, policy=LOOPBACK_ALLOWED
                )
            )
        assert not result.ok
        assert "SSH" not in result.message
        answers.append((result.stage, result.message.replace(f":{port}", ":PORT")))
    assert answers[0] == answers[1]
    if security == Security.TLS:
        assert answers[0] == (
            Stage.TLS,
            "127.0.0.1:PORT: the TLS handshake did not complete; this port may expect "
            "STARTTLS or no encryption.",
        )
    else:
        assert answers[0] == (
            Stage.CONNECT,
            "127.0.0.1:PORT did not answer as a mail server; if the port expects implicit "
            "TLS (usually 993), choose TLS.",
        )


@pytest.mark.parametrize("security", [Security.TLS, Security.STARTTLS])
def test_the_certificate_is_checked_for_the_name_while_the_vetted_address_is_used(
    dovecot: DovecotServer,
    account: Account,
    security: Security,
    hosts: HostTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connections = ConnectionLog()
    connections.install(monkeypatch)
    # The certificate names "localhost" and 127.0.0.1, where the connection goes;
    # checked against the address rather than the name given, it would pass.
    hosts.add("imap.mail.test", "127.0.0.1")
    settings = settings_for(dovecot, account, security)
    result = test_imap_connection(replace(settings, host="imap.mail.test"))
    assert (result.ok, result.stage) == (False, Stage.TLS)
    assert result.message.endswith("the server's certificate is for another host name.")
    assert test_imap_connection(replace(settings, host="localhost")).ok
    assert hosts.asked == ["imap.mail.test", "localhost"]
    assert connections.attempts == ["127.0.0.1", "127.0.0.1"]


@pytest.fixture
def lone_server() -> Iterator[DovecotServer]:
    """A Dovecot of the test's own, free to be stopped."""
    root = Path(tempfile.mkdtemp(prefix="mailbeacon-dovecot-"))
    server = start_dovecot(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_server_going_away_mid_session_is_a_lost_connection(lone_server: DovecotServer) -> None:
    account = lone_server.add_user()
    mailbox = open_mailbox(settings_for(lone_server, account))
    try:
        assert mailbox.find_sent_folder() == "Sent"
        lone_server.stop()
        with pytest.raises(ConnectionLost) as caught:
            mailbox.list_folders()
        assert caught.value.temporary
    finally:
        mailbox.close()


# -- folders ------------------------------------------------------------------------


def test_sent_is_found_by_its_special_use_flag(mailbox: ImapMailbox) -> None:
    folders = {f.name: f.flags for f in mailbox.list_folders()}
    assert "\\Sent" in folders["Sent"]
    assert mailbox.find_sent_folder() == "Sent"


def test_special_use_wins_over_a_usual_name(dovecot: DovecotServer) -> None:
    # "Gesendete Elemente" carries \Sent; "Sent Items" is only a familiar name.
    account = dovecot.add_user(folders=("Sent Items", "Gesendete Elemente"))
    with open_mailbox(settings_for(dovecot, account)) as mailbox:
        assert mailbox.find_sent_folder() == "Gesendete Elemente"


@pytest.mark.parametrize("name", ["Sent Items", "Sent Messages", "[Gmail]/Sent Mail", "INBOX.Sent"])
def test_sent_is_found_by_name_without_special_use(dovecot: DovecotServer, name: str) -> None:
    account = dovecot.add_user(folders=("Archive", name))
    with open_mailbox(settings_for(dovecot, account)) as mailbox:
        assert not any("\\Sent" in f.flags for f in mailbox.list_folders())
        assert mailbox.find_sent_folder() == name


def test_no_sent_folder_is_none(dovecot: DovecotServer) -> None:
    account = dovecot.add_user(folders=("Archive", "Outbox"))
    with open_mailbox(settings_for(dovecot, account)) as mailbox:
        assert mailbox.find_sent_folder() is None


def test_a_missing_folder_is_named_in_the_error(mailbox: ImapMailbox) -> None:
    with pytest.raises(FolderMissing, match="'Nowhere' does not exist"):
        mailbox.select("Nowhere")
    with pytest.raises(FolderMissing):
        mailbox.append("Nowhere", message(1))


# -- append, find, delete -----------------------------------------------------------


def test_append_stores_the_copy_seen_with_its_date(mailbox: ImapMailbox) -> None:
    when = dt.datetime(2024, 3, 5, 14, 30, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    uid = mailbox.append("Sent", message(1), flags=(SEEN,), when=when)
    assert uid == 1  # Dovecot answers APPENDUID (UIDPLUS)
    [fetched] = [m for batch in mailbox.fetch("Sent", [uid], part=FetchPart.FULL) for m in batch]
    assert SEEN in fetched.flags
    assert fetched.internal_date == when.astimezone(dt.UTC)
    assert fetched.data == message(1)


def test_message_id_search_finds_exact_matches_only(mailbox: ImapMailbox) -> None:
    first = mailbox.append("Sent", message(1, message_id="<abc@mb.test>"))
    mailbox.append("Sent", message(2, message_id="<xabc@mb.test>"))
    mailbox.append("Sent", message(3, message_id="<abc@mb.test.example>"))
    second = mailbox.append("Sent", message(4, message_id="<abc@mb.test>"))
    assert mailbox.find_by_message_id("Sent", "<abc@mb.test>") == [first, second]
    assert mailbox.find_by_message_id("Sent", "  abc@mb.test ") == [first, second]
    assert mailbox.find_by_message_id("Sent", "<nothing@mb.test>") == []


def test_message_id_with_characters_imap_cannot_send_bare_is_still_found(
    mailbox: ImapMailbox,
) -> None:
    odd = '<a"b(c)*%d@mb.test>'
    uid = mailbox.append("Sent", message(1, message_id=odd))
    mailbox.append("Sent", message(2, message_id="<other@mb.test>"))
    assert mailbox.find_by_message_id("Sent", odd) == [uid]


def test_delete_by_message_id_keeps_the_named_copy(mailbox: ImapMailbox) -> None:
    # The server saved a copy of its own (with the pixel); ours replaces it.
    theirs = mailbox.append("Sent", message(1, message_id="<dup@mb.test>"))
    ours = mailbox.append("Sent", message(1, message_id="<dup@mb.test>"))
    other = mailbox.append("Sent", message(2))
    assert theirs is not None and ours is not None and other is not None
    deletion = mailbox.delete_by_message_id("Sent", "<dup@mb.test>", keep=[ours])
    assert deletion.uids == (theirs,) and deletion.expunged
    assert mailbox.find_by_message_id("Sent", "<dup@mb.test>") == [ours]
    assert mailbox.select("Sent").exists == 2


def flag_deleted(server: DovecotServer, account: Account, folder: str, uid: int) -> None:
    """Someone else (another mail client) marks a message \\Deleted without expunging."""
    with imapclient.IMAPClient(server.host, server.imap_port, ssl=False) as other:
        other.login(account.username, account.password)
        other.select_folder(folder)
        other.add_flags([uid], [b"\\Deleted"])


def test_uid_expunge_leaves_messages_others_flagged_deleted(
    dovecot: DovecotServer, account: Account, mailbox: ImapMailbox
) -> None:
    mine = mailbox.append("Sent", message(1))
    theirs = mailbox.append("Sent", message(2))
    assert mine is not None and theirs is not None
    flag_deleted(dovecot, account, "Sent", theirs)
    assert mailbox.delete("Sent", [mine]).expunged
    remaining = [m.uid for batch in mailbox.fetch_since("Sent", 0) for m in batch]
    assert remaining == [theirs]


@pytest.fixture(scope="module")
def old_server() -> Iterator[DovecotServer]:
    """A Dovecot that announces no UIDPLUS (and no MOVE), like older servers."""
    root = Path(tempfile.mkdtemp(prefix="mailbeacon-dovecot-"))
    server = start_dovecot(
        root, capabilities="IMAP4rev1 LITERAL+ SASL-IR IDLE NAMESPACE SPECIAL-USE"
    )
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_without_uidplus_expunge_runs_only_when_nothing_else_is_flagged(
    old_server: DovecotServer,
) -> None:
    account = old_server.add_user()
    with open_mailbox(settings_for(old_server, account)) as mailbox:
        for n in (1, 2, 3):
            mailbox.append("Sent", message(n))
        uids = [m.uid for batch in mailbox.fetch_since("Sent", 0) for m in batch]
        assert mailbox.delete("Sent", [uids[0]]).expunged
        flag_deleted(old_server, account, "Sent", uids[2])
        deletion = mailbox.delete("Sent", [uids[1]])
        assert deletion.uids == (uids[1],) and not deletion.expunged
        # Nothing vanished: the other client's \Deleted message is still there.
        left = {m.uid: m.flags for batch in mailbox.fetch_since("Sent", 0) for m in batch}
        assert sorted(left) == uids[1:]
        assert all("\\Deleted" in flags for flags in left.values())


# -- selecting and reading ----------------------------------------------------------


def test_select_reports_uidvalidity_and_uidnext(mailbox: ImapMailbox) -> None:
    empty = mailbox.select("INBOX")
    assert empty.uidvalidity > 0 and empty.uidnext == 1 and empty.exists == 0
    mailbox.append("INBOX", message(1))
    mailbox.append("INBOX", message(2))
    after = mailbox.select("INBOX")
    assert (after.uidvalidity, after.uidnext, after.exists) == (empty.uidvalidity, 3, 2)
    assert mailbox.select("Sent").uidvalidity != 0


def test_a_renumbered_folder_is_not_read_with_old_uids(mailbox: ImapMailbox) -> None:
    mailbox.append("INBOX", message(1))
    state = mailbox.select("INBOX")
    with pytest.raises(UidValidityChanged):
        next(mailbox.fetch_since("INBOX", 0, uidvalidity=state.uidvalidity + 1))
    assert [len(b) for b in mailbox.fetch_since("INBOX", 0, uidvalidity=state.uidvalidity)] == [1]


def test_fetch_since_reads_ten_thousand_messages_in_order(
    dovecot: DovecotServer, account: Account, mailbox: ImapMailbox
) -> None:
    total = 10_000
    append_messages(dovecot, account, "INBOX", (message(n) for n in range(1, total + 1)))
    batches = list(mailbox.fetch_since("INBOX", 0, batch_size=500))
    assert len(batches) == total // 500
    uids = [m.uid for batch in batches for m in batch]
    assert uids == list(range(1, total + 1))
    assert batches[0][0].data.startswith(b"From: Alice Example")
    assert b"Subject: Message 10000\r\n" in batches[-1][-1].data
    assert b"Body of message" not in batches[-1][-1].data  # headers only
    assert [m.uid for b in mailbox.fetch_since("INBOX", total - 3) for m in b] == [
        total - 2,
        total - 1,
        total,
    ]
    assert list(mailbox.fetch_since("INBOX", total)) == []


def test_fetch_since_the_highest_uid_after_it_was_expunged_is_empty(
    mailbox: ImapMailbox,
) -> None:
    for n in (1, 2, 3):
        mailbox.append("INBOX", message(n))
    mailbox.delete("INBOX", [3])
    # UIDNEXT stays 4 while the highest UID is now 2; "3:*" still matches UID 2.
    assert mailbox.select("INBOX").uidnext == 4
    assert list(mailbox.fetch_since("INBOX", 2)) == []


def test_search_since_a_date_finds_the_recent_messages(mailbox: ImapMailbox) -> None:
    now = dt.datetime.now(dt.UTC)
    old = mailbox.append("INBOX", message(1), when=now - dt.timedelta(days=30))
    recent = mailbox.append("INBOX", message(2), when=now - dt.timedelta(days=2))
    today = mailbox.append("INBOX", message(3), when=now)
    assert old and recent and today
    found = mailbox.search_since("INBOX", (now - dt.timedelta(days=7)).date())
    assert found == [recent, today]
    fetched = [m.uid for b in mailbox.fetch("INBOX", found) for m in b]
    assert fetched == found


# -- waiting for mail ---------------------------------------------------------------


def test_idle_wakes_when_a_message_is_delivered(
    dovecot: DovecotServer, account: Account, mailbox: ImapMailbox
) -> None:
    assert mailbox.supports_idle()
    mailbox.select("INBOX")

    def deliver() -> None:
        time.sleep(0.3)
        write_maildir_messages(account.maildir, [message(1)])

    courier = threading.Thread(target=deliver)
    started = time.monotonic()
    courier.start()
    try:
        assert mailbox.wait_for_changes("INBOX", timeout=20)
    finally:
        courier.join()
    assert time.monotonic() - started < 10
    assert [m.uid for b in mailbox.fetch_since("INBOX", 0) for m in b] == [1]


def test_idle_without_news_returns_false_at_the_timeout(mailbox: ImapMailbox) -> None:
    started = time.monotonic()
    assert not mailbox.wait_for_changes("INBOX", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    # The session is usable after IDLE ends.
    assert mailbox.select("INBOX").exists == 0


def test_message_ids_are_normalised() -> None:
    assert normalise_message_id(" <a@b> ") == "<a@b>"
    assert normalise_message_id("a@b") == "<a@b>"
    assert normalise_message_id("junk <a@b> (comment)") == "<a@b>"
    assert normalise_message_id("") == ""
