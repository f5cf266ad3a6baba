"""`python -m penstock.dataplane.gateway`."""

import sys

from penstock.dataplane.gateway.command import main

sys.exit(main())
