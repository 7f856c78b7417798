"""PyInstaller launcher: the frozen exe starts here.

Double-clicked in Explorer, the exe's console window would close as soon as it ends, so it
waits for Enter then (and never under Task Scheduler or in a console): see ``console``.
"""

import sys

from api_pipeline.cli import main
from api_pipeline.console import wait_if_double_clicked

if __name__ == "__main__":
    code = main()
    wait_if_double_clicked(sys.argv[1:])
    sys.exit(code)
