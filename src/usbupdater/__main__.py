"""`python -m usbupdater` is the same as the `usbupdater` console script."""

import sys

from usbupdater.cli import main

sys.exit(main())
