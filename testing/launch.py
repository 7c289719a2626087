"""Starting programs from the tests: where the helper programs are, the environment a subprocess needs to import
``testing`` and ``hf_revdarts`` from this checkout, and a free port for a process group's rendezvous."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from testing import REPO

PROGRAMS = Path(__file__).resolve().parent / "programs"


def program(name: str) -> str:
    """Path of ``testing/programs/<name>.py``, to launch by path (python, torch.distributed.run, accelerate)."""
    path = PROGRAMS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no helper program {path}")
    return str(path)


def env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository root on PYTHONPATH (a program started by path has only its
    own folder on sys.path) and one OpenMP thread per process (the test machines have few cores)."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
