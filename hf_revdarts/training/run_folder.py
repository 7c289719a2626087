"""Output folders a run may write into, clear and hold: as careful as ``git clean``.

A run's ``--output_dir`` is cleared (``--overwrite_output_dir``, ``publish.py --overwrite``) only when every entry
in it is something this project writes there: the names each script produces (``RUN_OUTPUTS``). Anything else
(a ``.git``, a source file, a colleague's notes, another script's outputs) is refused by name, and nothing is
deleted. While a search or training runs, it holds an exclusive ``flock`` on ``.revdarts-run.lock`` in its folder:
a second run into the same folder stops before any work, and since the kernel drops the lock when its process
ends, however it ends, a killed run never leaves the folder locked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..model import REMOTE_CODE_FILES

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_NAME",
    "RUN_OUTPUTS",
    "RunFolderBusyError",
    "RunFolderError",
    "check_replaceable",
    "claim_output_dir",
    "foreign_entries",
    "probe_lock",
    "release_output_dir",
    "running",
]

LOCK_NAME = ".revdarts-run.lock"

# What each script writes into its output folder; a trailing "/" is a folder. Patterns are full matches.
_COMMON = ["checkpoint-[0-9]{6}/", "tokenizer/", "logs/", r"\.(tmp|old)-.+", re.escape(LOCK_NAME)]
RUN_OUTPUTS: dict[str, list[str]] = {
    "train": _COMMON + ["best/", "averaged/", r"train_summary\.json", r"eval_[\w.-]+\.json"],
    "search": _COMMON + [
        r"genotype\.json", r"alpha_history\.json", r"arch_parameters\.json", r"arch_parameters\.rank[0-9]+\.json",
        r"selection\.json", r"selection_\w+\.json", r"search_summary\.json", "derived_config/", "supernet/",
        r"alpha_heatmap\.png", r"alpha_entropy\.png", r"genotype\.png",
    ],
    "publish": [
        r"\.(tmp|old)-.+", r"config\.json", r"generation_config\.json", r"model\.safetensors",
        r"model-[0-9]{5}-of-[0-9]{5}\.safetensors", r"model\.safetensors\.index\.json", r"tokenizer\.json",
        r"tokenizer_config\.json", r"special_tokens_map\.json", r"README\.md", r"eval_results\.json",
        r"genotype\.png", r"training_state\.json", *(re.escape(name) for name in REMOTE_CODE_FILES),
    ],
}
_SCRIPTS = {"train": "train.py", "search": "search.py", "publish": "publish.py"}


class RunFolderError(FileExistsError):
    """An output folder that a run must not clear or write into."""


class RunFolderBusyError(RunFolderError):
    """Another live run holds the output folder."""


def _matches(entry: Path, patterns: list[str]) -> bool:
    for pattern in patterns:
        folder = pattern.endswith("/")
        if re.fullmatch(pattern.rstrip("/"), entry.name) and (not folder or entry.is_dir()):
            return True
    return False


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """The entries of ``folder`` that no run of ``kind`` ("train", "search", "publish") writes, sorted."""
    patterns = RUN_OUTPUTS[kind]
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not _matches(p, patterns))


def _looks_like(folder: Path, kind: str) -> str:
    # Which other script's folder this is, for the message (a search folder given to train.py, say).
    for other, patterns in RUN_OUTPUTS.items():
        if other == kind:
            continue
        entries = list(folder.iterdir())
        specific = [p for p in entries if _matches(p, patterns) and not _matches(p, RUN_OUTPUTS[kind])]
        if specific and all(_matches(p, patterns) for p in entries):
            return f"; it looks like the output of {_SCRIPTS[other]}"
    return ""


def check_replaceable(folder: str | os.PathLike, kind: str, flag: str) -> None:
    """Raise ``RunFolderError`` when ``folder`` holds anything a run of ``kind`` does not write: ``flag`` (the
    flag that asked to clear it) must never delete what the project cannot recognise as its own."""
    folder = Path(folder)
    foreign = foreign_entries(folder, kind)
    if foreign:
        named = [n for n in foreign if n != LOCK_NAME] or foreign  # the lock of a run is named only when alone
        shown = ", ".join(named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8 else "")
        raise RunFolderError(
            f"{flag}: {folder} holds {shown}, which no run of {_SCRIPTS[kind]} writes{_looks_like(folder, kind)}; "
            "nothing was deleted. Move those away, or give a new or empty folder"
        )


def _lock_path(folder: Path) -> Path:
    return folder / LOCK_NAME


def _holder(folder: Path) -> str:
    try:
        info = json.loads(_lock_path(folder).read_text(encoding="utf-8"))
        return f" (process {info['pid']} on {info['host']}, {info['script']} started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _try_lock(path: Path) -> int | None:
    """An open fd holding an exclusive flock on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


# The folders this process holds (resolved path -> fd). A process may run several scripts' main() one after
# another (tests, notebooks); flock is per open file, so the same process claiming again reuses its lock.
_HELD: dict[Path, int] = {}


def _busy(folder: Path) -> RunFolderBusyError:
    return RunFolderBusyError(
        f"--output_dir {folder} is in use by another run{_holder(folder)}: one run per folder at a time. Wait "
        "for it to end, stop it, or give another --output_dir"
    )


def running(folder: str | os.PathLike) -> str | None:
    """Who runs in ``folder`` now (process, host, script, start), or None when no live run holds it."""
    lock = _lock_path(Path(folder))
    if not lock.is_file():
        return None
    fd = _try_lock(lock)
    if fd is None:
        return _holder(Path(folder)).strip(" ()") or "a live run"
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None


def probe_lock(folder: str | os.PathLike) -> None:
    """Raise ``RunFolderBusyError`` when a live run holds ``folder`` (checked before any work; the lock of a
    killed run is gone with its process)."""
    folder = Path(folder)
    # Only the first process of a launch looks: the ranks would otherwise race each other for the lock.
    if os.environ.get("RANK", "0") != "0" or folder.resolve() in _HELD:
        return
    if running(folder) is not None:
        raise _busy(folder)


def _clear(folder: Path, kind: str) -> None:
    check_replaceable(folder, kind, "--overwrite_output_dir")  # again: the folder may have changed since the check
    removed = [p for p in folder.iterdir() if p.name != LOCK_NAME]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning("--overwrite_output_dir: deleted the previous %s run in %s (%s)", _SCRIPTS[kind], folder,
                       ", ".join(sorted(p.name for p in removed)))


def _claim(folder: Path, kind: str, overwrite: bool, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key not in _HELD:
        fd = _try_lock(_lock_path(folder))
        if fd is None:
            raise _busy(folder)
        _HELD[key] = fd
    fd = _HELD[key]
    info = {"pid": os.getpid(), "host": os.uname().nodename, "script": script,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    if overwrite:
        _clear(folder, kind)


def claim_output_dir(accelerator: Any, folder: str | os.PathLike, kind: str, overwrite: bool) -> None:
    """Hold ``folder`` for this run (the main process takes the lock, and with ``overwrite`` clears the previous
    run of ``kind``); every process raises the same ``RunFolderError`` when it cannot."""
    folder = Path(folder)
    error: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            _claim(folder, kind, overwrite, _SCRIPTS.get(kind, kind))
        except RunFolderError as e:
            error = [(type(e).__name__, str(e))]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(error)
    if error[0] is not None:
        name, message = error[0]
        raise (RunFolderBusyError if name == "RunFolderBusyError" else RunFolderError)(message)


def release_output_dir(folder: str | os.PathLike) -> None:
    """Let ``folder`` go (the end of a run; a process that ends lets go of it anyway)."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
