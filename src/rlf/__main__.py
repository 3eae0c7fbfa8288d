"""`python -m rlf ...` (what torchrun runs: `torchrun --nproc_per_node N -m rlf train ...`) is the `rlf` command."""

import sys

from rlf.cli import main

sys.exit(main())
