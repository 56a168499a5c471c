"""``python -m mmcore ...`` runs the command line (torchrun uses this form too)."""

import sys

from mmcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
