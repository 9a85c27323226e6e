"""`python -m mailwright.runtime.supervisor`."""

import sys

from mailwright.runtime.supervisor.daemon import main

sys.exit(main())
