"""The `mailbeacon` command: serve, migrate, instrument, classify, inspect events."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailbeacon.config import Settings

if TYPE_CHECKING:
    import asyncio


def _settings(args: argparse.Namespace) -> Settings:
    # --data-dir wins over MAILBEACON_DATA_DIR; the environment is updated so
    # that anything started from here (uvicorn workers) sees the same folder.
    if args.data_dir:
        os.environ["MAILBEACON_DATA_DIR"] = str(Path(args.data_dir).resolve())
    return Settings()


def _upgrade(settings: Settings) -> None:
    from mailbeacon.migrate import upgrade

    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url())


def _runtime(settings: Settings, *, migrate: bool = True) -> Any:
    from mailbeacon.db import is_sqlite
    from mailbeacon.runtime import Runtime

    # The embedded database migrates itself; a PostgreSQL server is migrated
    # explicitly by its operator (`mailbeacon db upgrade`).
    if migrate and is_sqlite(settings.database_url()):
        _upgrade(settings)
    return Runtime.from_settings(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.no_migrate:
        # Read by every server process (uvicorn workers too) through Settings.
        os.environ["MAILBEACON_MIGRATE_ON_START"] = "false"
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    host = args.host or settings.HOST
    port = args.port or settings.PORT
    print(
        f"mailbeacon serving on http://{host}:{port} (data in {settings.DATA_DIR.resolve()})",
        file=sys.stderr,
    )
    _print_sign_in_hint(args, settings, f"http://{host}:{port}")
    if args.workers > 1:
        from mailbeacon.kit.metrics import share_between_processes

        # /metrics in any worker adds up the counts of all of them.
        share_between_processes(settings.DATA_DIR / "metrics")
    run_server(
        args.server or settings.SERVER,
        "mailbeacon.asgi:app_factory",
        host=host,
        port=port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def run_server(
    server: str,
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    access_log: bool = False,
    factory: bool = True,
) -> None:
    """Serve the ASGI app ``target`` ("module:name") as `serve` does, under uvicorn or
    under granian, whose HTTP handling runs in Rust outside the interpreter lock
    (bench/edge.py serves its bare reference app through here, so both run alike)."""
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels

        Granian(
            target,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            factory=factory,
            workers=workers,
            loop=Loops.uvloop,
            log_level=LogLevels("debug" if log_level == "trace" else log_level),
            log_access=access_log,
        ).serve()
        return
    import uvicorn

    uvicorn.run(
        target,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _upgrade(settings)
    print("database is at the latest schema")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from mailbeacon.migrate import check

    settings = _settings(args)
    check(settings.database_url())
    print("models and migrations agree")
    return 0


def cmd_instrument(args: argparse.Namespace) -> int:
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.models import CopyStatus, Message, RecipientCopy, TrackingDecision
    from mailbeacon.tracking.charset import decode_html_bytes, encode_html

    settings = _settings(args)
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"mailbeacon instrument: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.text:
        body, encoding = data.decode("utf-8", errors="surrogateescape"), "utf-8"
    else:
        body, encoding = decode_html_bytes(data)
    runtime = _runtime(settings)
    with runtime.database.unit_of_work() as session:
        message = Message(
            user_id=None,
            subject=path.name[:998],
            body_html=None if args.text else body,
            body_text=body if args.text else None,
            open_tracking=not args.no_open,
            link_tracking=not args.no_links,
            is_preview=True,
            created_at=utcnow(),
        )
        session.add(message)
        session.flush()
        copy = RecipientCopy(
            message_id=message.id,
            address=args.to or "preview@mailbeacon.invalid",
            status=CopyStatus.PREVIEW,
            decision=TrackingDecision.TRACKED,
        )
        session.add(copy)
        session.flush()
        runtime.tracking.record_links(session, message)
        result = runtime.tracking.instrument(session, message, copy)
        copy_id, decision = copy.id, copy.decision
    out = result.text if args.text else result.html
    assert out is not None
    sys.stdout.buffer.write(
        encode_html(out, encoding)
        if not args.text
        else out.encode("utf-8", errors="surrogateescape")
    )
    sys.stdout.buffer.flush()
    print(
        f"mailbeacon: copy {copy_id}: {decision}, {len(result.links)} link(s) tracked, "
        f"pixel {'added' if result.open_tracked else 'not added'}",
        file=sys.stderr,
    )
    runtime.database.dispose()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    settings = _settings(args)
    runtime = _runtime(settings)

    async def run() -> int:
        # The outbox (email out) and the webhook deliveries (events out): what `serve`
        # runs beside the web app when RUN_WORKER is on.
        worker = runtime.make_outbox_worker()
        hooks = runtime.make_webhook_worker()
        runtime.outbox, runtime.webhooks = worker, hooks
        if args.once:
            handled = await worker.run_once()
            delivered = await hooks.run_once()
            print(
                f"mailbeacon worker: {handled} copies handled, {delivered} webhook deliveries",
                file=sys.stderr,
            )
            return 0
        stop = _stop_on_signal()
        await worker.start()
        await hooks.start()
        print(
            f"mailbeacon worker {worker.worker_id} running (data in {settings.DATA_DIR.resolve()})",
            file=sys.stderr,
        )
        await stop.wait()
        await hooks.stop()
        await worker.stop()
        return 0

    try:
        return asyncio.run(run())
    finally:
        runtime.database.dispose()


def _stop_on_signal() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets: how a long-running command is told to stop.
    Call it inside the running loop."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_ingest(args: argparse.Namespace) -> int:
    import asyncio

    settings = _settings(args)
    runtime = _runtime(settings)
    ingest = runtime.make_ingest(consume=True)
    from mailbeacon.kit.heap import freeze_startup_heap

    freeze_startup_heap()

    async def run() -> int:
        # The journal consumer alone: what `serve` runs beside the edge when RUN_INGEST
        # is on. Any number may run, on the machine whose journal folder they read.
        if args.once:
            stored = await asyncio.to_thread(ingest.consume_once)
            print(f"mailbeacon ingest: {stored} hits read from the journal", file=sys.stderr)
            return 0
        stop = _stop_on_signal()
        await ingest.start()
        print(
            f"mailbeacon ingest running (journal in {settings.journal_dir.resolve()})",
            file=sys.stderr,
        )
        await stop.wait()
        await ingest.stop()
        print(f"mailbeacon ingest stopped: {ingest.stats}", file=sys.stderr)
        return 0

    try:
        return asyncio.run(run())
    finally:
        runtime.database.dispose()


def cmd_sync(args: argparse.Namespace) -> int:
    import asyncio

    settings = _settings(args)
    runtime = _runtime(settings)

    async def run() -> int:
        worker = runtime.make_sync_worker()
        if args.once:
            stats = await worker.run_once()
            print(
                f"mailbeacon sync: {stats.sessions} mailbox(es) read, {stats.headers} new "
                f"message(s), {stats.stored} stored, {stats.sent_copies} Sent copies saved, "
                f"{stats.failures} failure(s)",
                file=sys.stderr,
            )
            return 0 if not stats.failures else 1
        stop = _stop_on_signal()
        await worker.start()
        print(
            f"mailbeacon sync {worker.worker_id} running (data in {settings.DATA_DIR.resolve()})",
            file=sys.stderr,
        )
        await stop.wait()
        await worker.stop()
        return 0

    try:
        return asyncio.run(run())
    finally:
        runtime.database.dispose()


def cmd_classify(args: argparse.Namespace) -> int:
    from mailbeacon.tracking.classify import Policy, explain_hit
    from mailbeacon.tracking.networks import NetworkMap

    settings = _settings(args)
    verdict = explain_hit(
        args.kind,
        args.ua,
        args.ip,
        args.seconds_after_send,
        args.head,
        NetworkMap.load(settings.DATA_DIR),
        Policy(too_fast_seconds=settings.TOO_FAST_SECONDS),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "label": str(verdict.label),
                    "reason": verdict.reason,
                    "certainty": verdict.certainty,
                }
            )
        )
    else:
        print(f"{verdict.label}\t{verdict.reason}")
    return 0


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def cmd_events(args: argparse.Namespace) -> int:
    from mailbeacon.tracking.repository import count_events, latest_events

    settings = _settings(args)
    runtime = _runtime(settings)
    with runtime.database.engine.connect() as conn:
        if args.count:
            print(count_events(conn))
        else:
            for row in latest_events(conn, args.limit):
                print(json.dumps({k: _jsonable(v) for k, v in row.items()}))
    runtime.database.dispose()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from mailbeacon.kit.datadir import load_secrets, new_secret, save_secrets

    settings = _settings(args)
    data = load_secrets(settings.DATA_DIR)
    keys: list[dict[str, Any]] = data["token_keys"]
    if args.keys_command == "add":
        new_id = max(k["id"] for k in keys) + 1
        if new_id > 255:
            print("no key ids left (0..255); remove old keys first", file=sys.stderr)
            return 2
        keys.append({"id": new_id, "secret": new_secret(64)})
        data["primary_token_key"] = new_id
        save_secrets(settings.DATA_DIR, data)
        print(f"added key {new_id}; new tokens use it, tokens of older keys still verify")
    elif args.keys_command == "remove":
        if not any(k["id"] == args.id for k in keys):
            print(f"no key {args.id}", file=sys.stderr)
            return 2
        if len(keys) == 1:
            print("cannot remove the only key", file=sys.stderr)
            return 2
        data["token_keys"] = [k for k in keys if k["id"] != args.id]
        if data.get("primary_token_key") == args.id:
            data["primary_token_key"] = max(k["id"] for k in data["token_keys"])
        save_secrets(settings.DATA_DIR, data)
        print(f"removed key {args.id}; links and pixels minted with it no longer verify")
    else:
        primary = data.get("primary_token_key") or max(k["id"] for k in keys)
        for k in keys:
            print(f"{k['id']}{' (primary)' if k['id'] == primary else ''}")
    return 0


def cmd_networks_refresh(args: argparse.Namespace) -> int:
    from mailbeacon.tracking.networks import refresh_networks

    settings = _settings(args)
    sources = dict(s.split("=", 1) for s in args.source) if args.source else None
    try:
        counts = refresh_networks(settings.DATA_DIR, sources)
    except Exception as exc:
        print(f"mailbeacon networks refresh: {exc}", file=sys.stderr)
        return 1
    for name, n in sorted(counts.items()):
        print(f"{name}\t{n} ranges")
    return 0


def _print_sign_in_hint(args: argparse.Namespace, settings: Settings, address: str) -> None:
    """Tell the person starting `serve` how to sign in (and first, on a fresh install, how
    to create the user to sign in with)."""
    from mailbeacon.accounts.service import account_service
    from mailbeacon.db import Database

    database = Database(settings.database_url())
    try:
        with database.sessions() as session:
            has_users = account_service.has_users(session)
    except Exception:  # not migrated yet (PostgreSQL with --no-migrate): serve says more
        return
    finally:
        database.dispose()
    if has_users:
        print(f"sign in at {address}/sign-in", file=sys.stderr)
        return
    where = f" --data-dir {settings.DATA_DIR.resolve()}" if args.data_dir else ""
    print(
        f"No user yet: open {address}/ in your browser to create your account"
        " (or create one with `mailbeacon user create --email you@example.com`"
        + (f" and{where}" if where else "")
        + ")",
        file=sys.stderr,
    )


def cmd_user_create(args: argparse.Namespace) -> int:
    import getpass

    from pydantic import ValidationError

    from mailbeacon.accounts.schemas import NewUser
    from mailbeacon.accounts.service import InvalidInput, account_service
    from mailbeacon.kit.validation import field_errors

    settings = _settings(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            print("mailbeacon user create: the passwords differ", file=sys.stderr)
            return 2
    else:
        print("mailbeacon user create: give --password-stdin (or --password)", file=sys.stderr)
        return 2
    try:
        data = NewUser(
            email=args.email, password=password, name=args.name or "", organisation=args.org or ""
        )
    except ValidationError as exc:
        for name, messages in field_errors(exc).items():
            for message in messages:
                print(f"mailbeacon user create: {name}: {message}", file=sys.stderr)
        return 2
    runtime = _runtime(settings)
    try:
        with runtime.database.unit_of_work() as session:
            user = account_service.create_user(session, data, admin=args.admin)
            email, organisation = user.email, account_service.organisation_name(session, user)
            role = user.role
    except InvalidInput as exc:
        for name, messages in exc.errors.items():
            for message in messages:
                print(f"mailbeacon user create: {name}: {message}", file=sys.stderr)
        return 2
    finally:
        runtime.database.dispose()
    print(
        f"created {email} in organisation '{organisation}' as its {role}; "
        f"sign in at {settings.BASE_URL.rstrip('/')}/sign-in"
    )
    return 0


def _operator(session: Any, org_name: str | None, command: str) -> Any:
    """The command line acts for the operator, in the named organisation (or the first)."""
    from mailbeacon.privacy import repository
    from mailbeacon.privacy.audit import Actor, Channel

    org = (
        repository.organisation_by_name(session, org_name)
        if org_name
        else repository.first_organisation(session)
    )
    if org is None:
        print(f"mailbeacon {command}: no such organisation", file=sys.stderr)
        return None
    return Actor(org.id, None, "command line (operator)", Channel.CLI)


def cmd_contact(args: argparse.Namespace) -> int:
    from mailbeacon.privacy.consent import ContactNotFound
    from mailbeacon.privacy.erasure import erase_contact, export_contact

    settings = _settings(args)
    runtime = _runtime(settings)
    command = f"contact {args.contact_command}"
    try:
        with runtime.database.unit_of_work() as session:
            actor = _operator(session, args.org, command)
            if actor is None:
                return 2
            if args.contact_command == "export":
                data = export_contact(session, runtime.privacy_keys, actor, args.address)
                print(json.dumps(data, indent=2, ensure_ascii=False))
                return 0
            erased = erase_contact(session, runtime.privacy_keys, actor, args.address)
    except ContactNotFound:
        print(f"mailbeacon {command}: no contact {args.address}", file=sys.stderr)
        return 2
    finally:
        runtime.database.dispose()
    print(
        f"erased {erased.address}: {erased.copies} copies with their events, {erased.replies} "
        f"replies, {erased.demo_deliveries} demo deliveries, {erased.consent_records} consent "
        "records; the emails keep their anonymous counts"
    )
    return 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    from mailbeacon.privacy.retention import run_retention

    settings = _settings(args)
    runtime = _runtime(settings)
    try:
        report = run_retention(runtime.database)
    finally:
        runtime.database.dispose()
    print(
        f"retention: {report.events} events deleted, {report.copies} copies' figures reset, "
        f"{report.notifications} notifications deleted, in {report.organisations} organisation(s)"
    )
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from mailbeacon.accounts.service import InvalidInput, account_service
    from mailbeacon.models import User

    settings = _settings(args)
    email = args.email.strip().lower()
    runtime = _runtime(settings)
    try:
        with runtime.database.unit_of_work() as session:
            user = session.scalars(select(User).where(User.email == email)).one_or_none()
            if user is None:
                print(f"mailbeacon token create: there is no user {email}", file=sys.stderr)
                return 2
            token, plain = account_service.create_api_token(
                session,
                user,
                args.name,
                [s for s in args.scopes.split(",") if s.strip()],
                args.expires_days,
            )
            scopes, expires = token.scopes, token.expires_at
    except InvalidInput as exc:
        for name, messages in exc.errors.items():
            for message in messages:
                print(f"mailbeacon token create: {name}: {message}", file=sys.stderr)
        return 2
    finally:
        runtime.database.dispose()
    # The token alone on standard output (for `$(...)`); what it may do on standard error.
    print(plain)
    until = f"until {expires:%Y-%m-%d %H:%M} UTC" if expires else "with no expiry"
    print(f"token for {email} may: {scopes.replace(' ', ', ')}; {until}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailbeacon", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data folder (default: $MAILBEACON_DATA_DIR or ./var)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the web app and the tracking edge")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true")
    p.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        help="the HTTP server (default: $MAILBEACON_SERVER or uvicorn)",
    )
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the database first")
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", parents=[common], help="apply migrations")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("check", parents=[common], help="fail if models and migrations disagree")
    p.set_defaults(func=cmd_db_check)

    p = sub.add_parser(
        "instrument", parents=[common], help="print a body as it would be sent, with tracking"
    )
    p.add_argument("file")
    p.add_argument("--text", action="store_true", help="the file is plain text")
    p.add_argument("--no-open", action="store_true", help="no open tracking")
    p.add_argument("--no-links", action="store_true", help="no link tracking")
    p.add_argument("--to", help="recipient address of the preview copy")
    p.set_defaults(func=cmd_instrument)

    p = sub.add_parser(
        "worker",
        parents=[common],
        help="deliver queued email (serve runs one too unless RUN_WORKER=false)",
    )
    p.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="store the tracking edge's journal into the database "
        "(serve runs one too unless RUN_INGEST=false)",
    )
    p.add_argument("--once", action="store_true", help="store what the journal holds, then exit")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "sync",
        parents=[common],
        help="read mailboxes over IMAP: replies, bounces, Sent copies "
        "(serve runs one too unless RUN_SYNC=false)",
    )
    p.add_argument("--once", action="store_true", help="read what is new once, then exit")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("classify", parents=[common], help="how a hit like this would be labelled")
    p.add_argument("--kind", choices=["open", "click"], required=True)
    p.add_argument("--ua", required=True, help="User-Agent")
    p.add_argument("--ip")
    p.add_argument("--seconds-after-send", type=float)
    p.add_argument("--head", action="store_true", help="the request was a HEAD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("events", parents=[common], help="latest events as JSON lines")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--count", action="store_true", help="print how many events are stored")
    p.set_defaults(func=cmd_events)

    keys = sub.add_parser("keys", help="token keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("list", parents=[common]).set_defaults(func=cmd_keys)
    keys.add_parser("add", parents=[common], help="add a key and make it primary").set_defaults(
        func=cmd_keys
    )
    p = keys.add_parser("remove", parents=[common], help="remove a key: its tokens stop verifying")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_keys)

    users = sub.add_parser("user", help="user accounts").add_subparsers(
        dest="user_command", required=True
    )
    p = users.add_parser("create", parents=[common], help="add a user who can sign in")
    p.add_argument("--email", required=True)
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", help="the password (visible to other local users: prefer --password-stdin)"
    )
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    p.add_argument("--name", help="display name")
    p.add_argument("--org", help="organisation name (made if new; default: the first one)")
    p.add_argument(
        "--admin",
        action="store_true",
        help="an admin of the organisation (its first user always is)",
    )
    p.set_defaults(func=cmd_user_create)

    contact = sub.add_parser("contact", help="a person's data: export, erase").add_subparsers(
        dest="contact_command", required=True
    )
    for name, what in (
        ("export", "print everything about the person as JSON"),
        ("erase", "erase the person; the emails keep their anonymous counts"),
    ):
        p = contact.add_parser(name, parents=[common], help=what)
        p.add_argument("address")
        p.add_argument("--org", help="organisation name (default: the first one)")
        p.set_defaults(func=cmd_contact)

    retention = sub.add_parser("retention", help="delete tracking data past retention")
    p = retention.add_subparsers(dest="retention_command", required=True).add_parser(
        "run", parents=[common], help="apply every organisation's retention period once"
    )
    p.set_defaults(func=cmd_retention_run)

    tokens = sub.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", required=True
    )
    p = tokens.add_parser(
        "create", parents=[common], help="mint an API token for a user and print it"
    )
    p.add_argument("--email", required=True, help="the user the token acts as")
    p.add_argument(
        "--scopes",
        default="read,send",
        help="what it may do, comma-separated: read, send, admin (default: read,send)",
    )
    p.add_argument("--name", default="command line", help="what will use it")
    p.add_argument("--expires-days", type=int, help="days until it stops working (default: never)")
    p.set_defaults(func=cmd_token_create)

    nets = sub.add_parser("networks", help="published network ranges").add_subparsers(
        dest="networks_command", required=True
    )
    p = nets.add_parser("refresh", parents=[common], help="download the published lists")
    p.add_argument(
        "--source",
        action="append",
        metavar="NAME=URL",
        help="refresh only these sources (URL or file path) instead of the published defaults",
    )
    p.set_defaults(func=cmd_networks_refresh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        from mailbeacon.db import describe_url, is_unreachable

        if not is_unreachable(exc):
            raise
        # One line an operator can act on, not a traceback.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        print(
            f"mailbeacon {args.command}: the database at "
            f"{describe_url(Settings().database_url())} is unavailable ({reason[0]})",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
