"""Every query of the accounts domain. Nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mailbeacon.models import (
    ApiToken,
    Invitation,
    MailboxConnection,
    Organisation,
    SignInAttempt,
    SyncState,
    User,
    UserSession,
)


def count_users(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)


def any_user(session: Session) -> bool:
    return session.scalar(select(User.id).limit(1)) is not None


def has_members(session: Session, organisation_id: int) -> bool:
    return (
        session.scalar(select(User.id).where(User.organisation_id == organisation_id).limit(1))
        is not None
    )


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.scalars(select(User).where(User.email == email)).one_or_none()


def get_organisation(session: Session, organisation_id: int) -> Organisation | None:
    return session.get(Organisation, organisation_id)


def get_organisation_by_name(session: Session, name: str) -> Organisation | None:
    return session.scalars(
        select(Organisation).where(Organisation.name == name).order_by(Organisation.id).limit(1)
    ).one_or_none()


def get_first_organisation(session: Session) -> Organisation | None:
    return session.scalars(select(Organisation).order_by(Organisation.id).limit(1)).one_or_none()


def get_session_with_user(session: Session, token_hash: str) -> tuple[UserSession, User] | None:
    row = session.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash == token_hash)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def delete_session(session: Session, token_hash: str) -> None:
    session.execute(delete(UserSession).where(UserSession.token_hash == token_hash))


def delete_expired_sessions(session: Session, user_id: int, now: datetime) -> None:
    session.execute(
        delete(UserSession).where(UserSession.user_id == user_id, UserSession.expires_at <= now)
    )


def get_api_token_with_user(session: Session, token_hash: str) -> tuple[ApiToken, User] | None:
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def list_api_tokens(session: Session, user_id: int) -> Sequence[ApiToken]:
    return session.scalars(
        select(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    ).all()


def get_api_token(session: Session, user_id: int, token_id: int) -> ApiToken | None:
    return session.scalars(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
    ).one_or_none()


def failure_times(session: Session, key: str, since: datetime) -> list[datetime]:
    """When a key failed to sign in since a moment, oldest first."""
    return list(
        session.scalars(
            select(SignInAttempt.at)
            .where(
                SignInAttempt.key == key,
                SignInAttempt.at > since,
                SignInAttempt.succeeded.is_(False),
            )
            .order_by(SignInAttempt.at)
        )
    )


def add_attempt(session: Session, key: str, at: datetime, *, succeeded: bool) -> None:
    session.add(SignInAttempt(key=key, at=at, succeeded=succeeded))


def lock_attempt_keys(session: Session, lock_ids: Sequence[int]) -> None:
    """PostgreSQL: wait for, then hold until the transaction ends, an advisory lock per id."""
    for lock_id in lock_ids:
        session.execute(select(func.pg_advisory_xact_lock(lock_id)))


def forget_failures(session: Session, key: str) -> None:
    session.execute(
        delete(SignInAttempt).where(SignInAttempt.key == key, SignInAttempt.succeeded.is_(False))
    )


def prune_attempts(session: Session, keys: Sequence[str], before: datetime) -> None:
    session.execute(
        delete(SignInAttempt).where(SignInAttempt.key.in_(keys), SignInAttempt.at <= before)
    )


def get_mailbox(session: Session, user_id: int) -> MailboxConnection | None:
    return session.scalars(
        select(MailboxConnection).where(MailboxConnection.user_id == user_id)
    ).one_or_none()


def touch_session(session: Session, session_id: int, now: datetime) -> None:
    session.execute(
        update(UserSession).where(UserSession.id == session_id).values(last_seen_at=now)
    )


def touch_api_token(session: Session, token_id: int, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def sync_state(session: Session, mailbox_id: int) -> SyncState | None:
    """The mailbox's sync state as the sync worker keeps it (read only here)."""
    return session.scalars(
        select(SyncState).where(SyncState.mailbox_connection_id == mailbox_id)
    ).one_or_none()


def get_invitation(session: Session, token_hash: str) -> Invitation | None:
    return session.scalars(
        select(Invitation).where(Invitation.token_hash == token_hash)
    ).one_or_none()


def claim_invitation(session: Session, token_hash: str, now: datetime) -> bool:
    """Mark an unused, unexpired invitation used; False if there is none to claim."""
    done = session.execute(
        update(Invitation)
        .where(
            Invitation.token_hash == token_hash,
            Invitation.used_at.is_(None),
            Invitation.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def pending_invitations(
    session: Session, organisation_id: int, now: datetime
) -> Sequence[Invitation]:
    return session.scalars(
        select(Invitation)
        .where(
            Invitation.organisation_id == organisation_id,
            Invitation.used_at.is_(None),
            Invitation.expires_at > now,
        )
        .order_by(Invitation.created_at.desc(), Invitation.id.desc())
    ).all()


def delete_invitation(session: Session, organisation_id: int, invitation_id: int) -> None:
    session.execute(
        delete(Invitation).where(
            Invitation.id == invitation_id,
            Invitation.organisation_id == organisation_id,
            Invitation.used_at.is_(None),
        )
    )
