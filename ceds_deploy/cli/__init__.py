"""The `ceds` command line (Typer commands, one module each; `app` assembles them)."""

import time

# When the command line started (perf_counter): `ceds segment` counts its time to the first mask from
# here, so the figure includes Python's imports as a user waits for them.
STARTED_AT = time.perf_counter()
