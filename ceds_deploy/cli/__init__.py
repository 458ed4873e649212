"""The `ceds` command line (Typer commands, one module each; `app` assembles them)."""

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

# When the command line started (perf_counter): `ceds segment` counts its time to the first mask from
# here, so the figure includes Python's imports as a user waits for them.
STARTED_AT = time.perf_counter()


@contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a command imports torch and opens its model, then
    as it was. Those imports make a million long-lived objects and no garbage, and the collections
    they set off cost 0.13 s of the 1.1 s a cold start spends importing (benchmarks/results/
    import_collections.json)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
