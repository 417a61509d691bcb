"""`python -m rnnkit` (and `torchrun -m rnnkit`) run the command line."""

import sys

from rnnkit.cli import main

sys.exit(main())
