"""`python -m perceiver.cli`: the `perceiver` program."""

import sys

from perceiver.cli import main

sys.exit(main())
