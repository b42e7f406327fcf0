"""dbt packages installed once per packages/lock content into a shared cache; no run sees a partial install.

dbt-core 1.11 has no flag or env var for ``packages-install-path``; it is read from dbt_project.yml only.
A project opts in with one line that still defaults to dbt's own behaviour::

    packages-install-path: "{{ env_var('DBT_PACKAGES_INSTALL_PATH', 'dbt_packages') }}"

and the hook then points ``DBT_PACKAGES_INSTALL_PATH`` at an immutable cache entry. That works for
read-only projects and never writes into the project. Projects without the line keep using their own
``dbt_packages/`` (baked into the image, or installed by a ``deps`` task) exactly as before.

An entry is built by running ``dbt deps`` on a shadow copy of the project's package files (byte-identical,
so dbt's lock-file hash still matches) with the install path pointing into a private build dir; the
finished dir is renamed into place, under an ``fcntl`` lock so concurrent runs build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlh_airflow_common.dbt.invocation import DbtInvocation, InvocationMode
from dlh_airflow_common.dbt.partial_parse import referenced_env_vars
from dlh_airflow_common.exceptions.dbt import DbtException

logger = logging.getLogger(__name__)

PACKAGES_PATH_ENV = "DBT_PACKAGES_INSTALL_PATH"
PACKAGE_FILES = ("packages.yml", "dependencies.yml")
LOCK_FILE = "package-lock.yml"
PROJECT_FILE = "dbt_project.yml"
MARKER_FILE = ".dlh_deps.json"
DEFAULT_LOCK_TIMEOUT = 900.0
_TMP_PREFIX = ".tmp-"
_SECRET_PREFIX = "DBT_ENV_SECRET"

Installer = Callable[[Path, Path], None]
"""``installer(shadow_project_dir, log_dir)`` runs ``dbt deps`` there and raises if it fails."""


@dataclass(frozen=True)
class PackagesSpec:
    """The package files of one project and everything that decides what ``dbt deps`` installs from them."""

    project_dir: Path
    files: tuple[tuple[str, bytes], ...]
    local_paths: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str | None], ...]
    dbt_version: str

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([self.dbt_version, self.local_paths, self.env]).encode("utf-8"))
        for name, content in self.files:
            digest.update(f"\x00{name}\x00{len(content)}\x00".encode())
            digest.update(content)
        return digest.hexdigest()[:32]


def _load_yaml(content: bytes) -> Any:
    try:
        return yaml.safe_load(content.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return None


def _declared_packages(files: Mapping[str, bytes]) -> list[Any]:
    entries: list[Any] = []
    for name in (*PACKAGE_FILES, LOCK_FILE):
        document = _load_yaml(files[name]) if name in files else None
        if isinstance(document, dict) and isinstance(document.get("packages"), list):
            entries += document["packages"]
    return entries


def _relative_locals(entries: list[Any]) -> list[str]:
    """``local:`` package paths relative to the project (dbt resolves them against the project root)."""
    found: set[str] = set()
    for entry in entries:
        local = entry.get("local") if isinstance(entry, dict) else None
        if isinstance(local, str) and "{{" not in local and not os.path.isabs(os.path.expanduser(local)):
            found.add(os.path.normpath(local))
    return sorted(found)


def read_packages(project_dir: str | os.PathLike[str], env: Mapping[str, str], dbt_version: str) -> PackagesSpec | None:
    """The project's package spec, or None when it declares no packages."""
    root = Path(project_dir).resolve()
    files: dict[str, bytes] = {}
    for name in (*PACKAGE_FILES, LOCK_FILE):
        path = root / name
        if path.is_file():
            files[name] = path.read_bytes()
    entries = _declared_packages(files)
    if not entries:
        return None
    locals_ = _relative_locals(entries)
    text = "\n".join(content.decode("utf-8", "replace") for content in files.values())
    names = referenced_env_vars(text)
    return PackagesSpec(
        project_dir=root,
        files=tuple(sorted(files.items())),
        local_paths=tuple((local, os.path.normpath(root / local)) for local in locals_),
        env=tuple((name, None if name.startswith(_SECRET_PREFIX) else env.get(name)) for name in names),
        dbt_version=dbt_version,
    )


def reads_install_path_env(project_dir: str | os.PathLike[str]) -> bool:
    """True when dbt_project.yml takes ``packages-install-path`` from ``DBT_PACKAGES_INSTALL_PATH``."""
    try:
        document = yaml.safe_load((Path(project_dir) / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    value = document.get("packages-install-path") if isinstance(document, dict) else None
    return isinstance(value, str) and PACKAGES_PATH_ENV in referenced_env_vars(value)


# -- building an entry ---------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
    poll: float = 0.1,
    holder: str = "another run is installing the same dbt packages",
) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path``; the OS drops it if the holder dies. ``holder`` names what the
    timeout message says is holding it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DbtException(
                        f"Timed out after {timeout:.0f}s waiting for {path}: {holder}.",
                        retryable=True,
                    ) from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _shadow_project(spec: PackagesSpec, build: Path, install_path: Path) -> Path:
    """A project holding only the package files, placed so each relative ``local:`` path still resolves."""
    # Normalised relative paths only start with "..": nest the shadow that deep inside the build dir.
    depth = max((Path(local).parts.count("..") for local, _ in spec.local_paths), default=0)
    shadow = build.joinpath(*[f"up{i}" for i in range(depth)], "project")
    shadow.mkdir(parents=True)
    for local, _ in spec.local_paths:
        parts = Path(local).parts
        ups = parts.count("..")
        if ups == len(parts):
            continue  # ``local: ..`` points at a parent of the project: nothing sensible to mirror
        lexical = Path(os.path.normpath(shadow.joinpath(*parts[: ups + 1])))
        target = os.path.normpath(spec.project_dir.joinpath(*parts[: ups + 1]))
        if not lexical.exists() and not lexical.is_symlink():
            lexical.parent.mkdir(parents=True, exist_ok=True)
            lexical.symlink_to(target)
    original = yaml.safe_load((spec.project_dir / PROJECT_FILE).read_text(encoding="utf-8"))
    document = dict(original) if isinstance(original, dict) else {}
    document["packages-install-path"] = str(install_path)
    (shadow / PROJECT_FILE).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    for name, content in spec.files:
        (shadow / name).write_bytes(content)
    return shadow


def _repoint_links(install_path: Path, build: Path) -> None:
    """dbt links local packages to the path it resolved, inside the build dir: link the real path instead."""
    for child in install_path.iterdir():
        if not child.is_symlink():
            continue
        target = os.readlink(child)
        if Path(target).is_absolute() and Path(target).is_relative_to(build):
            real = os.path.realpath(target)
            child.unlink()
            child.symlink_to(real, target_is_directory=True)


def ensure_packages(
    spec: PackagesSpec, root: str | os.PathLike[str], installer: Installer, *, timeout: float = DEFAULT_LOCK_TIMEOUT
) -> tuple[Path, bool]:
    """The cache entry for ``spec`` (built now if missing) and whether this call built it."""
    root = Path(root)
    final = root / spec.key
    if (final / MARKER_FILE).is_file():
        return final, False
    with file_lock(root / f"{spec.key}.lock", timeout=timeout):
        if (final / MARKER_FILE).is_file():
            return final, False
        build = root / f"{_TMP_PREFIX}{spec.key}-{os.getpid()}-{secrets.token_hex(4)}"
        build.mkdir(mode=0o700)
        try:
            install_path = build / "packages"
            shadow = _shadow_project(spec, build, install_path)
            installer(shadow, build / "logs")
            install_path.mkdir(exist_ok=True)  # dbt creates nothing when every package is already there
            _repoint_links(install_path, build)
            marker = {"key": spec.key, "project_dir": str(spec.project_dir), "dbt_version": spec.dbt_version,
                      "files": [name for name, _ in spec.files], "installed_at": time.time()}  # fmt: skip
            (install_path / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            if final.exists():  # the marker goes in before the rename, so this was not made by us
                shutil.rmtree(final)
            os.rename(install_path, final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return final, True


# -- wiring into a run ---------------------------------------------------------------------------------
def dbt_deps_installer(
    env: Mapping[str, str], venv_path: str | os.PathLike[str] | None, mode: InvocationMode = "subprocess"
) -> Installer:
    """Run ``dbt deps`` the way the run itself runs dbt (same mode, same dbt)."""

    def install(project_dir: Path, log_dir: Path) -> None:
        invocation = DbtInvocation(
            ["deps", "--project-dir", str(project_dir), "--log-path", str(log_dir)],
            env={k: v for k, v in env.items() if k != PACKAGES_PATH_ENV},
            venv_path=venv_path,
            mode=mode,
            on_output=lambda line: logger.debug("dbt deps: %s", line),
        )
        cwd = os.getcwd()
        try:
            outcome = invocation.run()
        finally:
            os.chdir(cwd)  # in-process dbt deps changes into the project dir
        if not outcome.success:
            messages = [str(event.get("info", {}).get("msg", "")) for event in outcome.error_events]
            if outcome.exception is not None:
                messages.append(str(outcome.exception))
            detail = "; ".join(m for m in messages if m) or f"exit code {outcome.return_code}"
            raise DbtException(f"dbt deps failed while installing packages into the cache: {detail}")

    return install


@dataclass(frozen=True)
class PreparedPackages:
    """Where dbt finds this run's packages (the value of ``DBT_PACKAGES_INSTALL_PATH``) and their key."""

    install_path: Path
    key: str | None


def prepare_packages(
    project_dir: str | os.PathLike[str],
    env: Mapping[str, str],
    *,
    dbt_version: str,
    cache_root: str | os.PathLike[str],
    command: str,
    run_dir: str | os.PathLike[str],
    venv_path: str | os.PathLike[str] | None = None,
    mode: InvocationMode = "subprocess",
    log: Any = logger,
    installer: Installer | None = None,
) -> PreparedPackages | None:
    """Install the project's packages into the cache if needed; None when the project does not opt in.

    A ``deps`` command still warms the cache, but dbt's own ``deps`` empties its install path first, so
    it gets a private one in the run dir and never touches a shared entry.
    """
    if PACKAGES_PATH_ENV in env or not reads_install_path_env(project_dir):
        return None  # not opted in, or the deployment already decided where packages live
    spec = read_packages(project_dir, env, dbt_version)
    if spec is None:
        return None
    started = time.monotonic()
    path, built = ensure_packages(
        spec, Path(cache_root) / "deps", installer or dbt_deps_installer(env, venv_path, mode)
    )
    if built:
        log.info("Installed dbt packages into the cache %s in %.1fs", path, time.monotonic() - started)
    else:
        log.info("Using cached dbt packages %s", path)
    if command == "deps":
        return PreparedPackages(install_path=Path(run_dir) / "dbt_packages", key=None)
    return PreparedPackages(install_path=path, key=spec.key)
