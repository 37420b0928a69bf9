"""A throwaway Dovecot IMAP server on loopback, for the tests and for bench/sync.py.

Debian's ``dovecot`` binary runs with a configuration written into a temporary
folder (``-c``, so nothing of /etc/dovecot is read): passwd-file sign-in, Maildir
storage in the same folder, plain IMAP with STARTTLS on one port and implicit TLS
on another, both on 127.0.0.1 with a self-signed certificate made here. Users are
handed out from a batch written at start (passwd-file notices changes to its
file at most once a second, too late for a test that signs in at once).

Special-use attributes (RFC 6154) are configured by name, so a user whose folders
carry other names ("Sent Items", "INBOX.Sent" style) sees a server without them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import ipaddress
import os
import pwd
import secrets
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import imapclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOVECOT = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
# The certificate names what clients connect to; "localhost" lets a test check
# that a wrong name is refused when it connects to 127.0.0.1 by that name.
CERT_NAMES = ("localhost",)
CERT_IPS = ("127.0.0.1",)

# Folders every default user gets; "Sent" carries \Sent through the namespace below.
DEFAULT_FOLDERS = ("Sent", "Drafts", "Trash", "Junk")

_CONFIG = """\
# Written by tests/sync/dovecot.py for one test run; not a production setup.
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailbeacon-test-{instance}
log_path = {root}/dovecot.log
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_uid = 0
# LAYOUT=fs keeps folder names as they are on disk ("INBOX.Sent" stays one folder).
mail_location = maildir:~/Maildir:LAYOUT=fs
# Tests do not need durability; skipping fsync keeps APPEND of thousands cheap.
mail_fsync = never
ssl = yes
ssl_cert = <{root}/tls/cert.pem
ssl_key = <{root}/tls/key.pem
{ssl_dh}
ssl_min_protocol = TLSv1.2
# Loopback tests sign in without TLS too; the client refuses that for remote hosts.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 0
# A wrong password answers at once instead of after the default two seconds.
auth_failure_delay = 0
mail_max_userip_connections = 200
{capability}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox "Gesendete Elemente" {{
    special_use = \\Sent
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # Without this socket the auth process keeps no per-IP penalty, which would
  # otherwise slow every sign-in after a test's deliberate wrong password by
  # up to 15 seconds (auth-penalty.h). Only the master runs as root.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  chroot =
}}
"""


def dovecot_missing_reason() -> str | None:
    """Why the fixture cannot run here, or None when Debian's Dovecot is installed."""
    if not DOVECOT.exists():
        return f"{DOVECOT} is missing (apt-get install dovecot-imapd)"
    if not Path("/usr/lib/dovecot/imap").exists():
        return "Dovecot's IMAP service is missing (apt-get install dovecot-imapd)"
    return None


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    password: str
    maildir: Path


@dataclass
class DovecotServer:
    """One running instance; ``add_user`` gives each test its own mailbox."""

    root: Path
    host: str
    imap_port: int  # plain IMAP, STARTTLS offered
    imaps_port: int  # implicit TLS
    ca_file: Path  # the self-signed certificate, to trust in tests
    process: subprocess.Popen[bytes]
    mail_owner: tuple[int, int]  # uid, gid the mail processes run as
    # Users written to passwd-file at start and not handed out yet.
    _unused: list[tuple[str, str]] = field(default_factory=list)

    def ssl_context(self) -> ssl.SSLContext:
        """A context that verifies the server against the fixture's own certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def add_user(self, folders: Sequence[str] = DEFAULT_FOLDERS) -> Account:
        """A user of its own with an empty INBOX and the given folders, able to sign in at once."""
        if not self._unused:
            self._unused.extend(_write_users(self.root / "users", USERS_PER_BATCH))
            # passwd-file looks at its file at most once a second (db-passwd-file.c).
            time.sleep(1.1)
        username, password = self._unused.pop(0)
        home = self.root / "home" / username
        maildir = home / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            create_maildir_folder(maildir, folder)
        if self.mail_owner != (os.getuid(), os.getgid()):
            for path in (home, *home.rglob("*")):
                os.chown(path, *self.mail_owner)
        return Account(username, password, maildir)

    def stop(self) -> None:
        """Stop the master and every process it started, open sessions included."""
        if self.process.poll() is None:
            # Dovecot's session processes outlive their master on purpose (so that an
            # upgrade keeps clients connected); the whole process group goes here.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def create_maildir_folder(maildir: Path, name: str) -> Path:
    """A folder in the "fs" layout: the IMAP name, '/' included, is the path on disk."""
    folder = maildir.joinpath(*name.split("/"))
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


_delivery = count()
_user_numbers = count(1)
USERS_PER_BATCH = 300


def _write_users(path: Path, n: int) -> list[tuple[str, str]]:
    """Append ``n`` users with random passwords to the passwd-file."""
    users = [
        (f"user{next(_user_numbers)}-{secrets.token_hex(3)}@mb.test", secrets.token_urlsafe(12))
        for _ in range(n)
    ]
    with path.open("a") as file:
        file.writelines(f"{name}:{{PLAIN}}{password}::::::\n" for name, password in users)
    return users


def write_maildir_messages(
    folder: Path, messages: Iterable[bytes], *, seen: bool = False, when: dt.datetime | None = None
) -> int:
    """Deliver messages straight into a Maildir folder, the way an MDA would.

    Dovecot gives them UIDs in file-name order at its next look, so the names start
    with a zero-padded sequence; the modification time becomes INTERNALDATE.
    """
    stamp = (when or dt.datetime.now(dt.UTC)).timestamp()
    host = "mbtest"
    written = 0
    target = folder / ("cur" if seen else "new")
    for data in messages:
        n = next(_delivery)
        # Dovecot's own scheme is <time>.M<usec>P<pid>.<host>; the ",S=" size lets it
        # skip a stat, and ":2,S" in cur/ is the \Seen flag (Maildir spec "info").
        base = f"{int(stamp)}.M{n:09d}P{os.getpid()}.{host},S={len(data)}"
        name = base + (":2,S" if seen else "")
        tmp = folder / "tmp" / base
        tmp.write_bytes(data)
        os.utime(tmp, (stamp, stamp))
        tmp.rename(target / name)
        written += 1
    return written


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _make_certificate(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAMES[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in CERT_NAMES]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in CERT_IPS]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path


def _login_user(user: str) -> str:
    # Dovecot runs its pre-login processes unprivileged; as root, its own Debian
    # user does that job (it only has to read what the master hands it).
    if user != "root":
        return user
    for candidate in ("dovenull", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(candidate)
            return candidate
    return user


def _mail_owner() -> tuple[int, int]:
    # Dovecot refuses to access mail as uid 0, so under root the mail processes run
    # as Debian's "dovecot" user (or "nobody") and the fixture hands them the folders.
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    for candidate in ("dovecot", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(candidate)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root needs a 'dovecot' or 'nobody' user for mail access")


def start_dovecot(
    root: Path, *, capabilities: str | None = None, timeout: float = 10.0
) -> DovecotServer:
    """Write the configuration under ``root``, start Dovecot and wait until both ports answer.

    Under root, Dovecot's own processes run as its unprivileged user, so every
    folder above ``root`` must be open to others (``tempfile.mkdtemp()`` under
    /tmp is; pytest's tmp_path is not).

    ``capabilities`` replaces the CAPABILITY list Dovecot announces after sign-in,
    to play an older server (the commands themselves keep working).
    """
    reason = dovecot_missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "state", "home"):
        (root / sub).mkdir(exist_ok=True)
    # The base_dir must not be reachable by others: Dovecot refuses world-writable parents.
    root.chmod(0o755)
    # Users are written before Dovecot starts: it would not notice a user added in
    # the same second as its previous look at the file.
    users = _write_users(root / "users", USERS_PER_BATCH)
    uid, gid = _mail_owner()
    os.chown(root / "home", uid, gid)
    ca_file = _make_certificate(root / "tls")
    user = pwd.getpwuid(os.getuid()).pw_name
    dh = Path("/usr/share/dovecot/dh.pem")
    imap_port, imaps_port = _free_port(), _free_port()
    config = _CONFIG.format(
        host=HOST,
        root=root,
        instance=secrets.token_hex(4),
        internal_user=pwd.getpwuid(uid).pw_name,
        internal_group=grp.getgrgid(gid).gr_name,
        login_user=_login_user(user),
        uid=uid,
        gid=gid,
        ssl_dh=f"ssl_dh = <{dh}" if dh.exists() else "",
        imap_port=imap_port,
        imaps_port=imaps_port,
        capability=f"imap_capability = {capabilities}" if capabilities else "",
    )
    config_path = root / "dovecot.conf"
    config_path.write_text(config)
    # What Dovecot says before its log is open (configuration errors) goes to a file.
    with (root / "dovecot.out").open("wb") as output:
        process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DovecotServer(root, HOST, imap_port, imaps_port, ca_file, process, (uid, gid), users)
    deadline = time.monotonic() + timeout
    pending = {imap_port, imaps_port}
    while pending:
        if process.poll() is not None:
            output = (root / "dovecot.out").read_text(errors="replace")
            raise RuntimeError(f"dovecot exited with {process.returncode}: {output}{server.log()}")
        for port in list(pending):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                pending.discard(port)
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"dovecot did not listen within {timeout}s: {server.log()}")
        if pending:
            time.sleep(0.01)
    return server


def append_messages(
    server: DovecotServer,
    account: Account,
    folder: str,
    messages: Iterable[bytes],
    *,
    batch: int = 1000,
) -> int:
    """Store messages through IMAP MULTIAPPEND (RFC 3502), a thousand per command.

    Faster here than writing Maildir files one by one, and the server assigns the
    UIDs itself, as it would for mail that arrives.
    """
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=60)
    stored = 0
    try:
        client.login(account.username, account.password)
        chunk: list[bytes] = []
        for data in messages:
            chunk.append(data)
            if len(chunk) == batch:
                client.multiappend(folder, chunk)
                stored += len(chunk)
                chunk = []
        if chunk:
            client.multiappend(folder, chunk)
            stored += len(chunk)
    finally:
        client.logout()
    return stored
