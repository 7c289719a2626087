"""training/publish.py, killed with SIGKILL right after it wrote the tokenizer into its half-finished folder: the
crash of the test that a killed publish leaves only a temporary folder, which the next publish removes.

    PYTHONPATH=. python testing/programs/publish_killed_mid_write.py <publish.py arguments>

The fault is injected from here (publish.py's module-level ``save_tokenizer`` is replaced), so the script carries
no test hook.
"""

import os
import signal

from testing.scripts import load_script

if __name__ == "__main__":
    publish = load_script("publish")
    save = publish.save_tokenizer

    def save_then_die(tokenizer, folder):
        save(tokenizer, folder)
        os.kill(os.getpid(), signal.SIGKILL)  # killed while the new folder is half written

    publish.save_tokenizer = save_then_die
    publish.main()
