"""What a long-running process does with its heap once it has started."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Keep everything alive now out of the cyclic collector's full passes.

    A started process holds tens of thousands of objects for good: modules, the ORM's
    mappers and compiled statements, templates, the agent tables. Every full
    collection walks all of them, and work that allocates a lot (a consumer pass over
    a journal makes some 50 full collections per 200,000 hits) paid a quarter of its
    CPU for those walks. Frozen, they are never walked again; what is garbage now is
    collected first, so none of it is kept for ever.
    """
    gc.collect()
    gc.freeze()
