"""``python -m ofa.cli`` (what ``torchrun ... -m ofa.cli train`` runs)."""

import sys

from ofa.cli import main

sys.exit(main())
