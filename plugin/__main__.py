"""``python -m avatarforcing.plugin`` runs the ``avatarforcing`` CLI."""

import sys

from avatarforcing.plugin.app.cli import main

sys.exit(main())
