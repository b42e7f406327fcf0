"""A remote ``dbt_project_dir`` made local: its current version resolved, fetched once into the worker's cache.

Each task start asks the source for its version (one ``HEAD`` for a bundle, one listing for a folder, one
``git ls-remote`` for a branch or tag, nothing for a commit id) and uses the cached tree of that version, under
a lease, for the whole run. Only a version the cache lacks is fetched: under the source's lock, into a
temporary name, checked (links, paths, ``dbt_project.yml``) and then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.archive import check_links, extract_archive
from dlh_airflow_common.dbt.channel import is_transient
from dlh_airflow_common.dbt.git_source import GitCredentials, fetch_commit, git_environment, resolve_ref
from dlh_airflow_common.dbt.project import PROJECT_FILE
from dlh_airflow_common.dbt.project_cache import DEFAULT_KEEP, DEFAULT_MIN_IDLE, Lease, ProjectCache
from dlh_airflow_common.dbt.project_source import ProjectSource, parse_source, safe_relative
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException

__all__ = ["ProjectCheckout", "checkout_project", "find_project_root", "source_version"]

ConnectionLookup = Callable[[str], Any]
_BUNDLE_FILE = "bundle"


@dataclass(frozen=True)
class ProjectCheckout:
    """The local project dir of one run and, for a remote source, the version it holds."""

    source: ProjectSource
    path: Path
    version: str | None = None
    fetched: bool = False

    def describe(self) -> dict[str, str]:
        """What the summary, XCom, lineage and the run report say about the project (no secrets: none in it)."""
        if self.version is None:
            return {}
        return {"url": self.source.url, "kind": self.source.kind, "version": self.version}


@dataclass(frozen=True)
class _Remote:
    """One source's calls: ``version()`` asks for the current version, ``fill(into)`` fetches it."""

    source: ProjectSource
    version: Callable[[], str]
    fill: Callable[[Path], str]


def find_project_root(tree: Path, source: ProjectSource) -> Path:
    """The project inside a fetched tree: ``#subdirectory``, the root, or its only top-level directory."""
    if source.subdirectory:
        candidate = tree / source.subdirectory
    elif (tree / PROJECT_FILE).is_file():
        candidate = tree
    else:
        children = [child for child in tree.iterdir() if not child.name.startswith(".")] if tree.is_dir() else []
        candidate = children[0] if len(children) == 1 and children[0].is_dir() else tree
    if not (candidate / PROJECT_FILE).is_file():
        where = f" under {source.subdirectory!r}" if source.subdirectory else ""
        raise DbtProjectSourceException(
            f"{source.url}: not a dbt project: no {PROJECT_FILE}{where} in what was fetched.", url=source.url
        )
    return candidate


# -- object storage ------------------------------------------------------------------------------------
def _object_version(info: Mapping[str, Any]) -> str:
    """An object's version id, else its ETag, else its size and modification time (local file systems)."""
    for key in ("VersionId", "version_id", "ETag", "etag", "md5_hash", "generation"):
        value = info.get(key)
        if value not in (None, "", "null"):
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or ""
    return f"size:{info.get('size')}:mtime:{modified}"


def _open(source: ProjectSource) -> tuple[Any, str]:
    """The source's file system (listing cache dropped: a stale listing would hide a new version) and path."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(source.location, conn_id=source.conn_id)
    fs = path.fs
    fs.invalidate_cache()
    return fs, str(path.path)


def _missing(source: ProjectSource, err: BaseException | None = None) -> DbtProjectSourceException:
    detail = f" ({type(err).__name__}: {err})" if err is not None and str(err) else ""
    return DbtProjectSourceException(
        f"{source.url}: no such bucket, key or prefix, or no permission to read it{detail}.", url=source.url
    )


@contextmanager
def _storage_errors(source: ProjectSource) -> Iterator[None]:
    """What the storage client raises, as one typed error naming the URL (retryable when it is transient)."""
    try:
        yield
    except DbtProjectSourceException:
        raise
    except (FileNotFoundError, PermissionError) as err:
        raise _missing(source, err) from None
    except Exception as err:
        via = f" through connection {source.conn_id!r}" if source.conn_id else ""
        raise DbtProjectSourceException(
            f"{source.url}: cannot be read{via}: {type(err).__name__}: {err}", url=source.url,
            retryable=is_transient(err),
        ) from None  # fmt: skip


def _archive_remote(source: ProjectSource) -> _Remote:
    def info() -> dict[str, Any]:
        with _storage_errors(source):
            fs, path = _open(source)
            found = dict(fs.info(path))
        if found.get("type") == "directory":
            raise DbtProjectSourceException(f"{source.url}: is a folder, not a bundle file.", url=source.url)
        return found

    def fill(into: Path) -> str:
        before = _object_version(info())
        bundle = into.parent / _BUNDLE_FILE
        with _storage_errors(source):
            fs, path = _open(source)
            fs.get_file(path, str(bundle))
        if _object_version(info()) != before:
            raise DbtProjectSourceException(
                f"{source.url}: changed while it was being fetched; try again.", url=source.url, retryable=True
            )
        extract_archive(bundle, into, url=source.url)
        bundle.unlink()
        return before

    return _Remote(source, lambda: _object_version(info()), fill)


def _objects_remote(source: ProjectSource) -> _Remote:
    def listing() -> tuple[str, dict[str, str]]:
        """The folder's objects (relative name -> full path) and the digest of their versions."""
        with _storage_errors(source):
            fs, root = _open(source)
            found = fs.find(root, detail=True)
        files: dict[str, str] = {}
        digest = hashlib.sha256()
        for full in sorted(found):
            info = found[full]
            if info.get("type") == "directory" or full.endswith("/") or full.rstrip("/") == root.rstrip("/"):
                continue  # folders, and the empty "folder/" objects some tools write to show one
            relative = safe_relative(full[len(root.rstrip("/")) + 1 :], url=source.url, what="object")
            files[relative.as_posix()] = full
            digest.update(f"{relative.as_posix()}\x00{_object_version(info)}\x00".encode())
        if not files:
            raise _missing(source)
        return f"listing:{digest.hexdigest()[:32]}", files

    def fill(into: Path) -> str:
        version, files = listing()
        into.mkdir(mode=0o700)
        targets = [str(into / name) for name in files]
        for target in targets:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        with _storage_errors(source):
            fs, _ = _open(source)
            fs.get(list(files.values()), targets)
        if listing()[0] != version:
            raise DbtProjectSourceException(
                f"{source.url}: changed while it was being fetched; try again.", url=source.url, retryable=True
            )
        return version

    return _Remote(source, lambda: listing()[0], fill)


# -- git -----------------------------------------------------------------------------------------------
def _git_remote(source: ProjectSource, connection: ConnectionLookup | None) -> _Remote:
    credentials = None
    if source.conn_id and connection is not None:
        try:
            credentials = GitCredentials.from_connection(connection(source.conn_id))
        except Exception as err:
            raise DbtProjectSourceException(
                f"{source.url}: connection {source.conn_id!r} cannot be read: {type(err).__name__}: {err}",
                url=source.url,
            ) from None
    redactor = Redactor(credentials.secrets if credentials else ())
    ref = source.ref or "HEAD"
    resolved: dict[str, str] = {}

    def version() -> str:
        with git_environment(credentials) as env:
            resolved["commit"] = resolve_ref(source.location, ref, env=env, url=source.url, redactor=redactor)
        return resolved["commit"]

    def fill(into: Path) -> str:
        commit = resolved.get("commit") or version()
        with git_environment(credentials) as env:
            return fetch_commit(source.location, ref, commit, into, env=env, url=source.url, redactor=redactor)

    return _Remote(source, version, fill)


# -- the checkout --------------------------------------------------------------------------------------
def _remote(source: ProjectSource, connection: ConnectionLookup | None) -> _Remote:
    if source.kind == "git":
        return _git_remote(source, connection)
    if source.kind == "archive":
        return _archive_remote(source)
    return _objects_remote(source)


def _checked_fill(remote: _Remote) -> Callable[[Path], str]:
    """``fill`` plus the checks a tree must pass before it is published (links, a dbt project inside)."""

    def fill(into: Path) -> str:
        version = remote.fill(into)
        check_links(into, remote.source.url)
        find_project_root(into, remote.source)
        return version

    return fill


def source_version(
    dbt_project_dir: str | os.PathLike[str], *, conn_id: str | None = None, connection: ConnectionLookup | None = None
) -> tuple[ProjectSource, str | None]:
    """The parsed source and its current version, asked of the source without fetching anything (None: local).

    :param dbt_project_dir: As for ``checkout_project``.
    :param conn_id: The Airflow connection that reaches the storage or the git server.
    :param connection: Looks a connection up by id, for git credentials.
    """
    source = parse_source(os.fspath(dbt_project_dir), conn_id)
    return source, _remote(source, connection).version() if source.remote else None


@contextmanager
def checkout_project(
    dbt_project_dir: str | os.PathLike[str],
    *,
    conn_id: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    connection: ConnectionLookup | None = None,
    keep: int = DEFAULT_KEEP,
    min_idle: float = DEFAULT_MIN_IDLE,
    log: Any = None,
) -> Iterator[ProjectCheckout]:
    """The project as a local directory for the duration of the block (remote versions are leased meanwhile).

    :param dbt_project_dir: A local path, an ``ObjectStoragePath`` URL or a ``git+`` URL (``project_source``).
    :param conn_id: The Airflow connection that reaches the storage or the git server.
    :param cache_dir: The per-worker cache of fetched versions (needed for a remote source).
    :param connection: Looks a connection up by id (the hook's ``get_connection``), for git credentials.
    :param keep: Versions of one source kept (``project_cache``'s pruning rule).
    :param min_idle: Seconds an older version must have been unused before it is removed.
    :param log: Where fetches are logged.
    """
    source = parse_source(os.fspath(dbt_project_dir), conn_id)
    if not source.remote:
        yield ProjectCheckout(source, Path(source.location))
        return
    if cache_dir is None:
        raise DbtProjectSourceException(f"{source.url}: a remote project needs a cache directory.", url=source.url)
    cache = ProjectCache(Path(cache_dir), keep=keep, min_idle=min_idle)
    remote = _remote(source, connection)
    version = remote.version()
    found = cache.lease(source.slot, version)
    fetched = found is None
    tree: Path
    lease: Lease
    if found is None:
        meta = {"url": source.url, "kind": source.kind}
        tree, lease, fetched = cache.publish(source.slot, version, _checked_fill(remote), meta=meta)
        version = _recorded_version(tree, version)
        if fetched and log is not None:
            log.info("Fetched dbt project %s (version %s) into %s", source.url, version, tree)
    else:
        tree, lease = found
    try:
        yield ProjectCheckout(source, find_project_root(tree, source), version=version, fetched=fetched)
    finally:
        lease.release()


def _recorded_version(tree: Path, default: str) -> str:
    """The version a published tree holds (it differs from the asked one when the source moved meanwhile)."""
    try:
        return str(json.loads(tree.with_name(f"{tree.name}.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return default
