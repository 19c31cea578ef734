"""``python -m adapter.testing``: a fake Miso, or with ``mixpanel`` a fake Export API."""

import sys

from adapter.testing.command import main

sys.exit(main())
