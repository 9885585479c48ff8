"""Atomic writes: a file (or directory) is either complete or absent, even if the process dies
mid-write, so Snakemake and a resumed run never see half an output; its mode follows the umask
(mkstemp/mkdtemp create 0600/0700, which would survive the rename). A full disk is an error that
says so and names the file. And JSON / JSON-lines reads whose errors name the file (and line)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def umask() -> int:
    """The process umask (reading it means setting it; two calls, so not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with naming_a_full_disk(path):
            os.chmod(tmp, 0o666 & ~umask())
            write(tmp)
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def naming_a_full_disk(path: str | Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC/EDQUOT) while writing `path` into an error that names it."""
    try:
        yield
    except Exception as err:
        if _disk_full(err):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}") from err
        raise


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: torch.save reports a failed Python write as a RuntimeError."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        err = err.__cause__ or err.__context__
    return False


def atomic_write_binary(path: str | Path, dump: Callable[[BinaryIO], None]) -> None:
    """dump(f) into an open binary file, atomically (Python file writes surface ENOSPC as OSError)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            dump(f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """One example per line, atomically; each line must hold no line break."""
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def replace_dir(tmp_dir: str | Path, out_dir: str | Path) -> None:
    """Move a fully written `tmp_dir` to `out_dir`, replacing whatever was there."""
    tmp_dir, out_dir = Path(tmp_dir), Path(out_dir)
    os.chmod(tmp_dir, 0o777 & ~umask())  # mkdtemp's 0700 would survive the rename
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def md5sum(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def read_jsonl(path: str | Path) -> list[Any]:
    """One JSON value per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None
    return records
