"""Files and folders written atomically: under a temporary name beside the target, then renamed into place,
so that a process killed at any moment leaves the previous version (or nothing), never half a file.

Temporaries are named ``.tmp-<name>-<random>`` (``remove_stale_temporaries`` finds what a killed run left)
and everything gets the modes the umask gives: tempfile's mkstemp/mkdtemp, and safetensors' own writer,
make 0600/0700 files and folders that no one else (a web server, a colleague on a shared cluster) can read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .guards import finite_json_dumps

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_folder",
    "atomic_savefig",
    "atomic_write_json",
    "atomic_write_text",
    "give_umask_modes",
    "remove_stale_temporaries",
]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_modes(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything in it the modes a plain ``open``/``mkdir`` would under the umask (files
    0666, executables and folders 0777, less the umask)."""
    mask = current_umask()
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """JSON through ``atomic_write_text``; NaN/inf are refused naming their key (bare ``NaN`` is not JSON)."""
    atomic_write_text(path, finite_json_dumps(data, where=str(path), indent=indent, ensure_ascii=False) + "\n")


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file, invalid JSON or another JSON type is a clear error that names
    ``what`` (e.g. ``"--eval_results"``) and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def atomic_savefig(fig: Any, path: str | os.PathLike, bbox_inches: str | None = "tight") -> None:
    """``fig.savefig`` at 110 dpi through a temporary file, then rename; ``bbox_inches=None`` keeps the figure's
    own size instead of cropping it to what it draws."""
    path = Path(path)
    tmp = path.with_name(_temporary_name(path).name + ".png")  # matplotlib picks the format by the suffix
    try:
        fig.savefig(tmp, dpi=110, bbox_inches=bbox_inches)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``final`` in two renames.

    On any error the temporary folder is removed and ``final`` is untouched. Between the two renames the
    old version still exists under ``.old-<name>-<pid>``, so even a kill there loses nothing
    (``remove_stale_temporaries`` puts it back).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty; pass --overwrite to replace it")
    tmp = _temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        give_umask_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Clean up after a run killed mid-write: drop its ``.tmp-*`` leftovers and put back a previous version
    (``.old-<name>-<pid>``) whose replacement never arrived. With ``name``, only the leftovers of that one
    file or folder (the parent may be shared with others). Returns what was removed or restored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = re.compile(rf"\.(tmp|old)-{re.escape(name)}-[0-9a-f]+(\.png)?" if name else r"\.(tmp|old)-.+")
    touched = []
    for stale in sorted(p for p in folder.iterdir() if mine.fullmatch(p.name)):
        final = folder / stale.name[len(".old-"):].rsplit("-", 1)[0]
        if stale.name.startswith(".old-") and not final.exists():
            os.replace(stale, final)  # killed between the two renames of atomic_folder: the old version stays
        elif stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        touched.append(stale)
    if touched:
        logger.info("cleaned up after an interrupted run in %s: %s", folder, ", ".join(p.name for p in touched))
    return touched
