"""``python -m qlib.workbook``: see :mod:`qlib.workbook.runner`."""
import sys

from qlib.workbook.runner import main

sys.exit(main())
