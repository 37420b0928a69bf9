"""What the accounts pages, API and command line hand to the service."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from mailbeacon.accounts.security import password_problem
from mailbeacon.kit.header_text import (
    capitalised,
    control_character_problem,
    header_text_problem,
)
from mailbeacon.models import Security

# A host name (RFC 1123 labels), an IPv4 address or a bracket-less IPv6 address.
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class NewUser(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    email: str
    name: str = Field(default="", max_length=200)
    organisation: str = Field(default="", max_length=200)
    # Declared after email and name, which its check reads. Kept as typed: sign-in
    # compares the password exactly, spaces included.
    password: Annotated[str, StringConstraints(strip_whitespace=False)] = Field(repr=False)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        # The name becomes the demo mailbox's sender name, in every email's From header.
        if isinstance(value, str):
            problem = header_text_problem(value)
            if problem is not None:
                raise ValueError(capitalised(problem))
        return value

    @field_validator("password")
    @classmethod
    def _password_strength(cls, value: str, info: ValidationInfo) -> str:
        problem = password_problem(value, [info.data.get("email", ""), info.data.get("name", "")])
        if problem:
            raise ValueError(problem)
        return value


class MailboxSettings(BaseModel):
    """Settings > Email sync: how mailbeacon sends as the user (SMTP) and reads the
    mailbox (IMAP: replies, bounces, the Sent folder). No IMAP host: no sync."""

    model_config = ConfigDict(str_strip_whitespace=True)

    sender_name: str = Field(default="", max_length=200)
    sender_address: str
    smtp_host: str
    smtp_port: int
    smtp_security: Security
    smtp_username: str = Field(default="", max_length=320)
    # Empty keeps the stored password: the form never shows it back.
    smtp_password: str = Field(default="", repr=False, max_length=1000)

    imap_host: str = ""
    imap_port: int = 993
    imap_security: Security = Security.TLS
    # Empty: the SMTP user name.
    imap_username: str = Field(default="", max_length=320)
    # "Same as SMTP" signs in to IMAP with the SMTP password; else ``imap_password``
    # (empty keeps the stored one).
    imap_same_password: bool = True
    imap_password: str = Field(default="", repr=False, max_length=1000)
    # Empty: the folder the server marks \Sent (RFC 6154), or the usual names.
    sent_folder: str = Field(default="", max_length=255)
    replace_provider_copies: bool = True

    @field_validator("sender_name", mode="before")
    @classmethod
    def _sender_name(cls, value: object) -> object:
        # The name goes into every email's From header: checked as typed, before
        # trimming, so that no control character or encoded word is ever saved.
        if isinstance(value, str):
            problem = header_text_problem(value)
            if problem is not None:
                raise ValueError(capitalised(problem))
        return value

    @field_validator("smtp_username", "imap_username")
    @classmethod
    def _username(cls, value: str) -> str:
        # A user name goes on the AUTH and LOGIN command lines as typed: a control
        # character there ends or splits the command (and PostgreSQL stores no NUL).
        problem = control_character_problem(value)
        if problem is not None:
            raise ValueError(capitalised(problem))
        return value

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str) -> str:
        bare = value.strip("[]")
        if not bare:
            raise ValueError("Enter the SMTP server's host name, e.g. smtp.example.com.")
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not _HOST.match(bare):
                raise ValueError(
                    "This is not a host name: use letters, digits, dots and dashes, "
                    "e.g. smtp.example.com."
                ) from None
        return bare.lower()

    @field_validator("imap_host")
    @classmethod
    def _imap_host(cls, value: str) -> str:
        bare = value.strip("[]")
        if not bare:
            return ""
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not _HOST.match(bare):
                raise ValueError(
                    "This is not a host name: use letters, digits, dots and dashes, "
                    "e.g. imap.example.com."
                ) from None
        return bare.lower()

    @field_validator("imap_port", mode="before")
    @classmethod
    def _imap_port(cls, value: object) -> object:
        if value in ("", None):
            return 993
        try:
            port = int(str(value).strip())
        except ValueError:
            raise ValueError(
                "Enter a port number between 1 and 65535 (usually 993 or 143)."
            ) from None
        if not 1 <= port <= 65535:
            raise ValueError("Enter a port number between 1 and 65535 (usually 993 or 143).")
        return port

    @field_validator("imap_security", mode="before")
    @classmethod
    def _imap_security(cls, value: object) -> object:
        if value in ("", None):
            return Security.TLS.value
        if value not in {s.value for s in Security}:
            raise ValueError("Choose implicit TLS, STARTTLS or none.")
        return value

    @field_validator("sent_folder")
    @classmethod
    def _sent_folder(cls, value: str) -> str:
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("A folder name cannot hold control characters.")
        return value

    @field_validator("smtp_port", mode="before")
    @classmethod
    def _port(cls, value: object) -> object:
        try:
            port = int(str(value).strip())
        except ValueError:
            raise ValueError(
                "Enter a port number between 1 and 65535 (usually 465 or 587)."
            ) from None
        if not 1 <= port <= 65535:
            raise ValueError("Enter a port number between 1 and 65535 (usually 465 or 587).")
        return port

    @field_validator("smtp_security", mode="before")
    @classmethod
    def _security(cls, value: object) -> object:
        if value not in {s.value for s in Security}:
            raise ValueError("Choose implicit TLS, STARTTLS or none.")
        return value


class TrackingOptions(BaseModel):
    """What the user allows at all; compose only offers what is on here."""

    open_tracking_enabled: bool = False
    link_tracking_enabled: bool = False
    notify_tracking: bool = False


class MailboxIn(BaseModel):
    """``PUT /api/mailbox``: the whole connection, as Settings > Email sync saves it, or
    ``{"use_demo": true}`` for the built-in demo mailbox. Passwords are write-only:
    omitted or empty keeps the stored one (unless the server changed)."""

    use_demo: bool = False
    sender_name: str = ""
    sender_address: str = ""
    smtp_host: str = ""
    smtp_port: int = 465
    smtp_security: Security = Security.TLS
    smtp_username: str = ""
    smtp_password: str = Field(default="", repr=False)
    imap_host: str = Field(default="", description="Empty: no sync")
    imap_port: int = 993
    imap_security: Security = Security.TLS
    imap_username: str = Field(default="", description="Empty: the SMTP user name")
    imap_password: str = Field(default="", repr=False)
    imap_same_password: bool | None = Field(
        default=None,
        description="Sign in to IMAP with the SMTP password; by default, unless "
        "imap_password is given",
    )
    sent_folder: str = Field(default="", description="Empty: the folder the server marks Sent")
    replace_provider_copies: bool = True


class SyncStatusOut(BaseModel):
    last_success_at: datetime | None
    last_error: str = Field(description="Why the last sync failed, in one sentence; empty if not")
    last_error_at: datetime | None
    next_attempt_at: datetime | None
    first_sync_done: bool
    stored_count: int = Field(description="Replies, automatic replies and bounces found")


class MailboxOut(BaseModel):
    is_demo: bool
    sender_name: str
    sender_address: str
    smtp_host: str
    smtp_port: int
    smtp_security: Security
    smtp_username: str
    has_smtp_password: bool
    imap_host: str
    imap_port: int
    imap_security: Security
    imap_username: str
    imap_same_password: bool
    has_imap_password: bool
    sent_folder: str
    replace_provider_copies: bool
    sync: SyncStatusOut | None = Field(description="Null until the first sync attempt")
    needs_password: list[str] = Field(
        default_factory=list,
        description="Password fields dropped by this change (the server changed): send them",
    )
