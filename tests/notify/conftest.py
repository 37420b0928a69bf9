"""A runtime on the test database, without any server around it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailbeacon.config import Settings
from mailbeacon.runtime import Runtime


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()
