"""`python -m penstock.dataplane.router`."""

import sys

from penstock.dataplane.router.command import main

sys.exit(main())
