"""``python -m tierpoint.cli``."""
import sys

from .app import main

sys.exit(main())
