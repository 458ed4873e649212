"""`python -m ceds_deploy.cli ARGS` = `ceds ARGS`; the module form torchrun can launch:
`torchrun --nproc_per_node 2 -m ceds_deploy.cli segment SCANS OUT --model MODEL`."""

import sys

from ceds_deploy.cli.app import main

sys.exit(main())
