"""training/search.py, killed with SIGKILL right after optimiser step N: the crash of the resume test.

    PYTHONPATH=. python testing/programs/search_killed_at_step.py N <search.py arguments>

The fault is injected from here (the search loop calls the module-level ``search_step``, replaced below),
so the production loop carries no test hook.
"""

import os
import signal
import sys

from testing.scripts import load_script

if __name__ == "__main__":
    kill_at = int(sys.argv.pop(1))
    search = load_script("search")
    step = search.search_step

    def step_then_die(run):
        losses = step(run)
        if run.state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return losses

    search.search_step = step_then_die
    sys.exit(search.main())
