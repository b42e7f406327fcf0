"""Where a dbt project comes from: a local path, an ``ObjectStoragePath`` URL (a folder or a bundle) or git.

Forms of ``dbt_project_dir``::

    /opt/dbt/shop                                   a local directory (as before)
    s3://bucket/projects/shop/                      every object under the prefix
    s3://bucket/bundles/shop.tar.gz                 a .zip, .tar.gz or .tgz bundle (gs://, abfs://, file:// too)
    git+https://git.example.com/team/shop.git@main  a branch, tag or full commit
    git+ssh://git@git.example.com/team/shop.git@v1.4
    git+file:///srv/git/shop.git@main               a repository on this host (tests)

Any of them may end with ``#subdirectory=path/in/source`` for a project that is not at the root. Credentials
never go into the URL: a URL holding a password is refused; they come from the connection.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from dlh_airflow_common.dbt.run_dir import sanitize
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException

__all__ = ["ARCHIVE_SUFFIXES", "ProjectSource", "SourceKind", "parse_source", "safe_relative"]

SourceKind = Literal["local", "objects", "archive", "git"]
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
GIT_PREFIX = "git+"
GIT_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
DEFAULT_GIT_REF = "HEAD"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ProjectSource:
    """A parsed ``dbt_project_dir``.

    ``location`` is the local path, the object URL, or the git remote (``git+`` and the ref removed); ``url``
    is what the messages show. ``ref`` is the git ref; ``subdirectory`` the project's place in the source.
    """

    kind: SourceKind
    url: str
    location: str
    ref: str | None = None
    subdirectory: str | None = None
    conn_id: str | None = None

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    @property
    def slot(self) -> str:
        """The cache directory of this source: every version of one folder, bundle or repository goes there."""
        digest = hashlib.sha256(f"{self.kind}\x00{self.location}".encode()).hexdigest()[:12]
        name = PurePosixPath(self.location.rstrip("/")).name
        for suffix in (*ARCHIVE_SUFFIXES, ".git"):
            name = name.removesuffix(suffix)
        return f"{sanitize(name or self.kind, max_length=40)}-{digest}"


def safe_relative(name: str, *, url: str, what: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside its root, or a refusal naming ``url``.

    Absolute paths, ``..`` parts, drive letters and backslashes are refused rather than rewritten: a bundle or
    listing holding one was not made for this and must not be half-used.
    """
    path = PurePosixPath(name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if (
        not parts
        or path.is_absolute()
        or ".." in parts
        or "\\" in name
        or "\x00" in name
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise DbtProjectSourceException(
            f"{url}: {what} {name!r} is not a relative path inside its root; refused.", url=url
        )
    return PurePosixPath(*parts)


def _subdirectory(split: SplitResult, url: str) -> str | None:
    if not split.fragment:
        return None
    values = parse_qs(split.fragment).get("subdirectory")
    if not values or not values[0].strip("/"):
        raise DbtProjectSourceException(f"{url}: the only fragment understood is #subdirectory=<path>.", url=url)
    return safe_relative(values[0], url=url, what="subdirectory").as_posix()


def _refuse_password(split: SplitResult, url: str) -> None:
    if split.password:
        shown = url.replace(f":{split.password}@", ":***@")
        raise DbtProjectSourceException(
            f"{shown}: a password in the project URL would end up in logs and process lists; put the "
            "credentials into an Airflow connection and pass its id as dbt_project_conn_id.",
            url=shown,
        )


def _git_source(value: str, conn_id: str | None) -> ProjectSource:
    rest = value[len(GIT_PREFIX) :]
    split = urlsplit(rest)
    _refuse_password(split, value)
    if split.scheme not in GIT_SCHEMES:
        raise DbtProjectSourceException(
            f"{value}: git URLs are git+{'://, git+'.join(sorted(GIT_SCHEMES))}://...", url=value
        )
    path, ref = split.path, DEFAULT_GIT_REF
    if "@" in path:
        path, ref = path.rsplit("@", 1)
        if not ref:
            raise DbtProjectSourceException(f"{value}: empty git ref after '@'.", url=value)
    if not path.strip("/"):
        raise DbtProjectSourceException(f"{value}: no repository path.", url=value)
    remote = split._replace(path=path, fragment="", query=split.query).geturl()
    if ref.startswith("-") or remote.startswith("-"):
        raise DbtProjectSourceException(f"{value}: a git ref or remote may not start with '-'.", url=value)
    shown = split._replace(fragment="").geturl()
    return ProjectSource("git", url=GIT_PREFIX + shown, location=remote, ref=ref,
                         subdirectory=_subdirectory(split, value), conn_id=conn_id)  # fmt: skip


def parse_source(value: str, conn_id: str | None = None) -> ProjectSource:
    """Parse ``dbt_project_dir``; a bad URL raises ``DbtProjectSourceException`` naming it.

    :param value: A local path, an ``ObjectStoragePath`` URL or a ``git+`` URL (module docstring).
    :param conn_id: The Airflow connection that reaches the storage or the git server.
    """
    value = str(value)
    if value.startswith(GIT_PREFIX):
        return _git_source(value, conn_id)
    if not _SCHEME.match(value):
        return ProjectSource("local", url=value, location=value, conn_id=conn_id)
    split = urlsplit(value)
    _refuse_password(split, value)
    location = split._replace(fragment="").geturl()
    kind: SourceKind = "archive" if split.path.lower().endswith(ARCHIVE_SUFFIXES) else "objects"
    if kind == "objects":
        location = location.rstrip("/")
    if not split.netloc and split.scheme != "file":
        raise DbtProjectSourceException(f"{value}: no bucket or container in the URL.", url=value)
    return ProjectSource(kind, url=location, location=location, subdirectory=_subdirectory(split, value),
                         conn_id=conn_id)  # fmt: skip
