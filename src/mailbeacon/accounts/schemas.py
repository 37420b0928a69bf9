"""What the accounts pages, API and command line hand to the service."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailbeacon.accounts.security import PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS
from mailbeacon.models import Security

# A host name (RFC 1123 labels), an IPv4 address or a bracket-less IPv6 address.
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class NewUser(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    email: str
    password: str = Field(repr=False)
    name: str = Field(default="", max_length=200)
    organisation: str = Field(default="", max_length=200)

    @field_validator("password", mode="before")
    @classmethod
    def _password_length(cls, value: object) -> object:
        if isinstance(value, str) and len(value) < PASSWORD_MIN_CHARS:
            raise ValueError(f"Use at least {PASSWORD_MIN_CHARS} characters.")
        if isinstance(value, str) and len(value) > PASSWORD_MAX_CHARS:
            raise ValueError(f"Use at most {PASSWORD_MAX_CHARS} characters.")
        return value


class MailboxSettings(BaseModel):
    """Settings > Email sync: how mailbeacon sends as the user (SMTP)."""

    model_config = ConfigDict(str_strip_whitespace=True)

    sender_name: str = Field(default="", max_length=200)
    sender_address: str
    smtp_host: str
    smtp_port: int
    smtp_security: Security
    smtp_username: str = Field(default="", max_length=320)
    # Empty keeps the stored password: the form never shows it back.
    smtp_password: str = Field(default="", repr=False, max_length=1000)

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
