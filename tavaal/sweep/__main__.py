"""``python -m tavaal.sweep``, also the entry point of ``ray job submit``: see :mod:`tavaal.sweep.cli`."""

import sys

from tavaal.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
