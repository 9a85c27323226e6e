"""`python -m mailwright.runtime.host`."""

import sys

from mailwright.runtime.host.process import main

sys.exit(main())
