"""``python -m vm_memory_tools``: the same as the ``vm-memory`` console script."""

import sys

from vm_memory_tools.cli import main

sys.exit(main())
