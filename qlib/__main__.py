import sys

from qlib.cli import main

sys.exit(main())
