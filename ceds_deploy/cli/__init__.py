"""The `ceds` command line (Typer commands, one module each; `app` assembles them)."""

import gc
import signal
import threading
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


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager's, batch scheduler's or container's stop) ends a command as Ctrl-C
    does: cleanly (segment: the report of the cases finished, the lock released; train: the last
    checkpoint kept for --resume). The command line's own process only; the previous handler comes
    back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
