"""Row ids as the JSON API takes them, in paths, queries and bodies.

A number beyond what the id column holds is not an id of ours; let through, the
database driver refuses to bind it and the request fails with a server error. So
every id the API takes is bounded by its column's type, and a larger one is
invalid input (422), documented as such in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# Ids of BIGINT columns (``models.base.BigId``: messages, copies, notifications, ...),
# signed 64-bit integers on both databases. The bound is lower still, 2**53 - 1, the
# largest integer JSON carries exactly between implementations (RFC 8259 section 6):
# a client that reads numbers as doubles, as JavaScript does, could not name a larger id.
MAX_ROW_ID = 2**53 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]

# Ids of INTEGER columns (a plain ``mapped_column(primary_key=True)``: users, webhook
# endpoints, ...), signed 32-bit integers on PostgreSQL.
MAX_SMALL_ROW_ID = 2**31 - 1
SmallRowId = Annotated[int, Field(ge=1, le=MAX_SMALL_ROW_ID)]
