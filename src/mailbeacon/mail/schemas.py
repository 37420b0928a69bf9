"""What compose hands to the service: a draft as the user typed it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Draft(BaseModel):
    """An email about to be sent; addresses are raw strings, validated by the service.

    Each entry of ``to``/``cc``/``bcc`` may hold several comma-separated addresses,
    exactly as typed. Give ``body_html`` (rich text), ``body_text`` (plain text)
    or both; with HTML alone the plain-text part is generated from it.
    """

    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = ""
    body_html: str | None = None
    body_text: str | None = None
    open_tracking: bool = True
    link_tracking: bool = True
