"""`python -m kdsl.cli ...` is the `kdsl` command."""

import sys

from kdsl.cli import main

sys.exit(main())
