"""``python -m diffaudit ARGS`` runs the ``diffaudit`` command (where the script is not on PATH)."""

import sys

from diffaudit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
