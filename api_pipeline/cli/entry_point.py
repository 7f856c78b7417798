"""PyInstaller launcher: the frozen exe starts here.

The one-file exe first removes the copies of itself that runs stopped by force left in %TEMP%
(see ``onefile``). Double-clicked in Explorer, the exe's console window would close as soon as
it ends, so it waits for Enter then (and never under Task Scheduler or in a console): see ``console``.
"""

import sys

from api_pipeline.cli.console import wait_if_double_clicked
from api_pipeline.cli.main import main
from api_pipeline.cli.onefile import clean_up_after_runs_stopped_by_force

if __name__ == "__main__":
    clean_up_after_runs_stopped_by_force()
    code = main()
    wait_if_double_clicked(sys.argv[1:])
    sys.exit(code)
