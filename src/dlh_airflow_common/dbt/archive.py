"""Unpacking a project bundle (``.zip``, ``.tar.gz``) so that nothing in it can land outside its root.

Every member is checked before anything is extracted: absolute names, ``..`` parts, links pointing outside
the root, devices and FIFOs make the whole bundle refused (no half-extracted tree is ever used). The format is
read from the file's first bytes, not its name.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dlh_airflow_common.dbt.project_source import safe_relative
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException

__all__ = ["check_links", "extract_archive"]

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1024 * 1024
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError)


def extract_archive(archive: Path, into: Path, *, url: str) -> None:
    """Extract ``archive`` into the (new, empty) directory ``into``; a refused or corrupt bundle raises.

    :param archive: The downloaded bundle.
    :param into: Where its members go; created here.
    :param url: The bundle's URL, named in every error.
    """
    with archive.open("rb") as handle:
        magic = handle.read(4)
    into.mkdir(mode=0o700)
    try:
        if magic in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
            _extract_zip(archive, into, url)
        elif magic[:2] == _GZIP_MAGIC:
            _extract_tar(archive, into, url)
        else:
            raise DbtProjectSourceException(f"{url}: not a .zip or .tar.gz bundle.", url=url)
    except DbtProjectSourceException:
        raise
    except _CORRUPT as err:
        raise DbtProjectSourceException(
            f"{url}: the bundle is corrupt or truncated ({type(err).__name__}: {err}).", url=url
        ) from None


def _extract_zip(archive: Path, into: Path, url: str) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in members:
            if info.is_dir() and _is_root(info.filename):
                continue
            safe_relative(info.filename, url=url, what="archive member")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DbtProjectSourceException(
                    f"{url}: archive member {info.filename!r} is a symbolic link; refused.", url=url
                )
        for info in members:
            if info.is_dir() and _is_root(info.filename):
                continue
            target = into / safe_relative(info.filename, url=url, what="archive member")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)


def _is_root(name: str) -> bool:
    """``.`` or ``./``: the root itself, which ``tar -C dir .`` puts first."""
    return name.strip("/") in ("", ".") and not name.startswith("/")


def _check_tar_member(member: tarfile.TarInfo, url: str) -> None:
    if member.isdir() and _is_root(member.name):
        return
    name = safe_relative(member.name, url=url, what="archive member")
    if member.isfile() or member.isdir():
        return
    if member.issym() or member.islnk():
        # A symlink resolves against its own directory, a hard link against the archive root.
        base = name.parent if member.issym() else PurePosixPath()
        link = member.linkname
        resolved = posixpath.normpath(posixpath.join(base.as_posix(), link))
        if posixpath.isabs(link) or resolved == ".." or resolved.startswith("../"):
            raise DbtProjectSourceException(
                f"{url}: archive member {member.name!r} links to {link!r}, outside the bundle; refused.", url=url
            )
        return
    raise DbtProjectSourceException(
        f"{url}: archive member {member.name!r} is not a file, directory or link; refused.", url=url
    )


def _extract_tar(archive: Path, into: Path, url: str) -> None:
    with tarfile.open(archive, mode="r:gz") as bundle:
        members = bundle.getmembers()  # reads the whole stream: a truncated bundle fails here, before extraction
        for member in members:
            _check_tar_member(member, url)
        if hasattr(tarfile, "data_filter"):  # the standard library's own check, as a second line
            bundle.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python 3.11 before 3.11.4
            for member in members:
                member.mode = (member.mode & 0o755) | (0o600 if member.isfile() else 0o700)
                bundle.extract(member, into, set_attrs=False)
    check_links(into, url)


def check_links(root: Path, url: str) -> None:
    """After extraction: no symbolic link (including chains of them) resolves outside ``root``."""
    real_root = os.path.realpath(root)
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    relative = os.path.relpath(path, root)
                    raise DbtProjectSourceException(
                        f"{url}: {relative!r} links outside the project tree; refused.", url=url
                    )
