"""The pipeline's driver-level execution writes what SQLAlchemy itself would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from mailbeacon.db import _sqlite_timestamp
from mailbeacon.models.base import UTCDateTime

_ORM_WRITES = UTCDateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
_DECORATED = UTCDateTime()


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
def test_a_timestamp_is_stored_as_text_exactly_as_the_orm_stores_it(
    value: datetime, zone: timezone | None
) -> None:
    value = value.replace(tzinfo=zone)
    assert _ORM_WRITES is not None
    expected = _ORM_WRITES(_DECORATED.process_bind_param(value, sqlite.dialect()))
    assert _sqlite_timestamp(value) == expected
    # Again, from the formatted values kept (the same instant in UTC gives the same text).
    assert _sqlite_timestamp(value) == expected
    if zone is not None:
        assert _sqlite_timestamp(value.astimezone(UTC)) == expected
