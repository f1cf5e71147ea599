"""``python -m forgetting ...`` is the ``forgetting`` command."""

import sys

from forgetting.cli import main

sys.exit(main())
