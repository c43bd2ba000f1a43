"""``python -m neurorecon.dryrun`` (``make dryrun``)."""

import sys

from .run import main

sys.exit(main())
