"""Train MGID: ``python train.py --config quick`` (see ``python train.py --help``; same as ``mgid train``)."""
import sys

from mgid.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
