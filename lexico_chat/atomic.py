"""Atomic writes of files and folders: a temporary one next to the target, fsync, then one rename.

* The temporary file is ``.NAME.PID.RANDOM.lexico-tmp`` in the target's folder, so a process killed
  mid-write (``kill -9``, power loss) leaves a file that says what it is; the next write to the same
  folder removes such files whose process is gone.
* Any failure (no permission, disk full, a file size limit, a directory in the way) raises
  ``SaveError`` naming the path and the cause; the earlier file at the target stays intact and the
  temporary file is removed.
* Files get the permissions ``open()`` would give them: 0666 less the umask (0644 by default).

``check_writable`` makes the same checks before long work, so a command can refuse a bad target
before it spends minutes producing what it was asked to save. ``write_folder_atomic`` does the same for a
folder (a converted model).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lexico_chat.errors import SaveError

__all__ = ["TEMP_SUFFIX", "check_writable", "remove_stale_temps", "write_atomic", "write_safetensors"]

TEMP_SUFFIX = ".lexico-tmp"
_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")


def _cause(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _target(path: str | os.PathLike) -> Path:
    """``path`` expanded, refused when it names a folder or lies under a file (SaveError)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SaveError(f"cannot save to {path}: it is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SaveError(f"cannot save to {path}: {parent} is a file, not a folder")
            break
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse (SaveError) a target that a later ``write_atomic(path, ...)`` could not write: a folder, a
    path under a file, a folder where no file can be created. Creates nothing that stays."""
    path = _target(path)
    folder = next(parent for parent in path.parents if parent.exists())  # write_atomic creates the missing ones
    _create_temp(path, 0o600, folder).unlink()
    return path


def _create_temp(path: Path, mode: int, folder: Path | None = None) -> Path:
    """A new empty temporary file for ``path`` in ``folder`` (default: beside it), ``mode`` less the umask; or
    SaveError."""
    folder = path.parent if folder is None else folder
    tmp = folder / _temp_path(path).name
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    except OSError as err:
        raise SaveError(f"cannot save to {path}: cannot create files in {folder} ({_cause(err)})") from None
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``write_atomic`` in ``folder`` whose process is gone; returns them."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            stale = Path(folder) / name
            try:
                stale.unlink()
            except OSError:
                continue
            removed.append(stale)
    return removed


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    An interrupted or failed write leaves any earlier file at ``path`` untouched and no temporary file
    behind; an ``OSError`` becomes ``SaveError("cannot save to PATH: cause")``.
    """
    path = _target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaveError(f"cannot save to {path}: cannot create {path.parent} ({_cause(err)})") from None
    remove_stale_temps(path.parent)
    tmp = _create_temp(path, 0o666)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # a writer that recreated the file (safetensors makes 0600) gets open()'s mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SaveError(f"cannot save to {path}: {_cause(err)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (name -> CPU torch tensor) with string ``metadata`` as one safetensors file,
    atomically; the bytes are written by Python, so a full disk or a size limit is a plain ``SaveError``."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_folder_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` and move the folder onto ``path`` in one rename (every file fsynced first).

    An interrupted write leaves no folder at ``path``; when another process got there first, its folder is
    kept and this one discarded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
