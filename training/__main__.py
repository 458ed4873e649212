"""`python -m ceds_deploy.training ARGS` = `ceds train ARGS`; the module form torchrun can launch:
`torchrun --nproc_per_node 2 -m ceds_deploy.training DATA_DIR --out RUN_DIR ...`."""

import sys

from ceds_deploy.cli.app import main

sys.exit(main(["train", *sys.argv[1:]]))
