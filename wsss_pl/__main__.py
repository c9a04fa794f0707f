import sys

from wsss_pl.cli import main

if __name__ == "__main__":
    sys.exit(main())
