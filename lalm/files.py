"""Write-then-rename: the one way lalm writes a file that something may read back.

A reader never sees half a file: the bytes go to a temporary file beside the target, which is
renamed over it only once complete (DESIGN.md: nothing half-written is ever read back). A write
that fails leaves the target as it was and removes the temporary file.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it to ``path``.

    The file gets mode 0666 less the umask, as `open` creates files (`tempfile.mkstemp` and
    safetensors' ``save_file`` would make it private, 0600). The temporary name does not end in
    the target's suffix: a writer that picks a format by suffix must be told the format.
    """
    path = Path(path)
    tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp"))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0666 & ~umask, read without changing the umask
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder) through `write_atomic`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
