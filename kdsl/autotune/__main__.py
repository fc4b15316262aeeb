"""`python -m kdsl.autotune READ_FD WRITE_FD`: an autotuner worker process (see worker.py)."""

import sys

from kdsl.autotune.worker import main

main(sys.argv[1:])
