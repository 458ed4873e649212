"""`python -m ceds_deploy.cli ARGS` = `ceds ARGS`; the module form torchrun can launch:
`torchrun --nproc_per_node 2 -m ceds_deploy.cli segment SCANS OUT --model MODEL`."""

from ceds_deploy.cli.app import console_main

console_main()
