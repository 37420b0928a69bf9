"""People an organisation writes to; created on first use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base
from mailbeacon.models.privacy import ConsentState


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("organisation_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))  # lower-cased
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The latest consent record's state (its history: privacy's consent_records).
    consent_state: Mapped[ConsentState] = mapped_column(String(16), default=ConsentState.UNKNOWN)
    consent_updated_at: Mapped[datetime | None]
