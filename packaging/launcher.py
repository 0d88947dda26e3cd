"""Entry point of the frozen bundle: the same `roost` command as a Python install."""

import sys

from roost.cli import main

if __name__ == "__main__":
    sys.exit(main())
