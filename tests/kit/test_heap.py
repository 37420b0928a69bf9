"""freeze_startup_heap: the living leave the collector's reach, the garbage is collected."""

from __future__ import annotations

import gc
import weakref

from mailbeacon.kit.heap import freeze_startup_heap


class Node:
    me: Node


def test_living_objects_are_frozen_and_garbage_is_collected_first() -> None:
    alive = Node()
    alive.me = alive
    dead = Node()
    dead.me = dead  # a cycle: only the collector can free it
    gone = weakref.ref(dead)
    del dead
    try:
        freeze_startup_heap()
        assert gone() is None  # collected, not frozen for ever
        # Frozen objects are in no generation: no full pass walks them again.
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())
