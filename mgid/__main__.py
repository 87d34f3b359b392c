"""``python -m mgid ...``: the `mgid` command line (see `mgid.cli`)."""
import sys

from mgid.cli import main

if __name__ == "__main__":
    sys.exit(main())
