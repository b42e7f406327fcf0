"""Carry dbt's ``partial_parse.msgpack`` across isolated run dirs, so isolation does not cost a full parse.

dbt reuses a saved parse only when its own checks pass (``ManifestLoader.is_partial_parsable`` in
dbt-core: dbt version, ``--vars``/``--profile``/``--target``, the profile's connection keys, env vars
read by dbt_project.yml, every project's dbt_project.yml). The cache keeps one entry per combination of
the inputs that feed those checks, so runs with different targets or vars never evict each other; within
an entry dbt itself works out which files changed. An entry is replaced atomically (temp file +
``os.replace``): a reader sees the old file or the new one, never a half-written one. A corrupt or stale
entry makes dbt log ``UnableToPartialParse``/``ParsedFileLoadFailed`` and parse in full, and the full
parse then replaces the entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import yaml

from dlh_airflow_common.dbt.run_dir import private_temp_root, sanitize

logger = logging.getLogger(__name__)

PARTIAL_PARSE_FILE = "partial_parse.msgpack"
CACHE_DIR_NAME = ".dlh_cache"
DEFAULT_MAX_ENTRIES = 16
_ENTRY_SUFFIX = ".msgpack"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# msgpack encodes dbt's manifest as a map: fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf).
_MSGPACK_MAP_MARKERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ENV_VAR_CALL = re.compile(r"""env_var\(\s*['"]([^'"]+)['"]""")
_SECRET_PREFIX = "DBT_ENV_SECRET"
# Options that dbt folds into its vars hash, read from the argv dbt actually receives.
_KEY_OPTIONS = ("--profiles-dir", "--profile", "--target", "--vars")


# -- locations -----------------------------------------------------------------------------------------
def cache_root(run_root: str | os.PathLike[str], configured: str | os.PathLike[str] | None = None) -> Path:
    """``configured`` if given, else ``<run dir root>/.dlh_cache``, else one under the private temp root."""
    if configured is not None:
        root = Path(configured).expanduser()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root
    preferred = Path(run_root) / CACHE_DIR_NAME
    try:
        preferred.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK | os.X_OK):
            return preferred
    except OSError as err:
        if err.errno not in _NOT_WRITABLE:
            raise
    fallback = private_temp_root() / CACHE_DIR_NAME
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def dbt_version(venv_path: str | os.PathLike[str] | None = None) -> str:
    """dbt-core's version in this interpreter, or in ``venv_path`` (read from its dist-info, no subprocess)."""
    if venv_path is None:
        try:
            return metadata.version("dbt-core")
        except metadata.PackageNotFoundError:
            return "unknown"
    venv = Path(venv_path)
    if venv.name == "dbt" and venv.parent.name == "bin":  # venv_path may name the executable itself
        venv = venv.parent.parent
    for info in sorted(venv.glob("lib/python*/site-packages/dbt_core-*.dist-info")):
        return info.name[len("dbt_core-") : -len(".dist-info")]
    return f"venv:{venv.resolve()}"


# -- the key -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParseKey:
    """The inputs outside the project's files that make dbt discard a saved parse; one cache entry each."""

    dbt_version: str
    project_dir: str
    profile: str | None = None
    target: str | None = None
    vars: str | None = None
    profiles_digest: str | None = None
    env: tuple[tuple[str, str | None], ...] = ()
    packages: str | None = None

    @property
    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    @property
    def project_slot(self) -> str:
        """One directory per project copy: same-named projects at different paths never share entries."""
        path_hash = hashlib.sha256(self.project_dir.encode("utf-8")).hexdigest()[:12]
        return f"{sanitize(Path(self.project_dir).name, max_length=40)}-{path_hash}"


def option_values(argv: Sequence[str]) -> dict[str, str]:
    """The last value of each option that feeds dbt's vars/profile hash (``--x v`` and ``--x=v`` forms)."""
    found: dict[str, str] = {}
    for index, arg in enumerate(argv):
        for option in _KEY_OPTIONS:
            if arg == option and index + 1 < len(argv):
                found[option] = argv[index + 1]
            elif arg.startswith(option + "="):
                found[option] = arg[len(option) + 1 :]
    return found


def canonical_vars(raw: str | None) -> str | None:
    """``--vars`` in a canonical form: key order and YAML-vs-JSON spelling do not split the cache."""
    if raw is None or not raw.strip():
        return None
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if not parsed:
        return None
    return json.dumps(parsed, sort_keys=True, default=str)


def referenced_env_vars(*texts: str) -> list[str]:
    """Names passed to ``env_var('NAME')`` in the given file contents, sorted."""
    return sorted({name for text in texts for name in _ENV_VAR_CALL.findall(text)})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _profiles_file(options: Mapping[str, str], env: Mapping[str, str]) -> Path | None:
    directory = options.get("--profiles-dir") or env.get("DBT_PROFILES_DIR")
    candidates = [Path(directory)] if directory else [Path.cwd(), Path.home() / ".dbt"]
    for candidate in candidates:
        path = candidate.expanduser() / "profiles.yml"
        if path.is_file():
            return path
    return None


def parse_key(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    project_dir: str | os.PathLike[str],
    version: str,
    packages: str | None = None,
) -> ParseKey:
    """Build the key from the argv and environment dbt will see.

    The profiles.yml contents stand in for dbt's profile hash (a generated profile holds the connection
    fields and ``env_var`` placeholders, never secret values). Env vars read by dbt_project.yml or
    profiles.yml are keyed by value, except ``DBT_ENV_SECRET_*`` whose values stay out of the key.
    """
    project = Path(project_dir).resolve()
    options = option_values(argv)
    profiles = _profiles_file(options, env)
    profiles_text = _read_text(profiles) if profiles is not None else ""
    names = referenced_env_vars(_read_text(project / "dbt_project.yml"), profiles_text)
    # dbt also takes --target/--profile from these when the argv does not name them.
    names += [name for name, flag in (("DBT_TARGET", "--target"), ("DBT_PROFILE", "--profile")) if flag not in options]
    values = tuple((name, None if name.startswith(_SECRET_PREFIX) else env.get(name)) for name in sorted(set(names)))
    return ParseKey(
        dbt_version=version,
        project_dir=str(project),
        profile=options.get("--profile"),
        target=options.get("--target"),
        vars=canonical_vars(options.get("--vars")),
        profiles_digest=hashlib.sha256(profiles_text.encode("utf-8")).hexdigest() if profiles_text else None,
        env=values,
        packages=packages,
    )


def partial_parse_disabled(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """True when this dbt run neither reads nor writes the msgpack (``--no-partial-parse``)."""
    flags = [arg for arg in argv if arg in ("--partial-parse", "--no-partial-parse")]
    if flags:
        return flags[-1] == "--no-partial-parse"
    return env.get("DBT_PARTIAL_PARSE", "").strip().lower() in {"0", "false", "no", "off"}


# -- the cache -----------------------------------------------------------------------------------------
def looks_like_msgpack(path: Path) -> bool:
    """A cheap sanity check (first byte is a msgpack map); dbt does the real validation."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1)
    except OSError:
        return False
    return len(head) == 1 and head[0] in _MSGPACK_MAP_MARKERS


@dataclass
class Seed:
    """What ``seed`` put into one run's target dir, so ``publish`` can tell whether dbt parsed again."""

    entry: Path
    local: Path
    started_ns: int
    seeded: bool
    local_stamp: tuple[int, int] | None

    def dbt_wrote_new_file(self) -> bool:
        stamp = _stamp(self.local)
        return stamp is not None and stamp != self.local_stamp


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


class PartialParseCache:
    """Entries live at ``<root>/<project slot>/<key digest>.msgpack``; the newest few per project are kept."""

    def __init__(self, root: str | os.PathLike[str], *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.root = Path(root)
        self.max_entries = max(1, max_entries)

    def entry(self, key: ParseKey) -> Path:
        return self.root / key.project_slot / f"{key.digest}{_ENTRY_SUFFIX}"

    def seed(self, key: ParseKey, target_path: str | os.PathLike[str]) -> Seed:
        """Copy the entry for ``key`` (if any, and plausible) to ``<target_path>/partial_parse.msgpack``."""
        entry = self.entry(key)
        local = Path(target_path) / PARTIAL_PARSE_FILE
        started = time.time_ns()
        seeded = False
        if entry.is_file() and looks_like_msgpack(entry):
            try:
                # A copy, not a link: dbt rewrites the file in place, which must never reach the cache.
                shutil.copyfile(entry, local)
                seeded = True
                _touch_access_time(entry)
            except OSError as err:
                logger.warning("Could not seed %s from the partial-parse cache: %s", local, err)
                local.unlink(missing_ok=True)
        return Seed(entry=entry, local=local, started_ns=started, seeded=seeded, local_stamp=_stamp(local))

    def publish(self, seed: Seed) -> bool:
        """Atomically replace the entry with the msgpack dbt wrote in this run; False if there was none.

        An entry written by a run that started later than this one is newer and stays.
        """
        if not seed.dbt_wrote_new_file() or not looks_like_msgpack(seed.local):
            return False
        entry = seed.entry
        current = _stamp(entry)
        if current is not None and current[0] > seed.started_ns:
            logger.debug("Partial-parse cache %s was refreshed by a newer run; keeping it.", entry)
            return False
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = entry.parent / f"{_TMP_PREFIX}{entry.stem}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            shutil.copyfile(seed.local, temp)
            os.utime(temp, ns=(time.time_ns(), seed.started_ns))
            os.replace(temp, entry)
        finally:
            temp.unlink(missing_ok=True)
        self.prune(entry.parent)
        return True

    def prune(self, slot: Path) -> list[Path]:
        """Drop the least recently used entries beyond ``max_entries`` and temp files of crashed writers."""
        removed: list[Path] = []
        now = time.time()
        entries: list[tuple[float, Path]] = []
        try:
            children = list(slot.iterdir())
        except OSError:
            return removed
        for child in children:
            try:
                info = child.stat()
            except OSError:
                continue
            if child.name.startswith(_TMP_PREFIX):
                if now - info.st_mtime > _STALE_TMP_SECONDS:
                    removed.append(child)
            elif child.suffix == _ENTRY_SUFFIX:
                entries.append((max(info.st_atime, info.st_mtime), child))
        entries.sort(reverse=True)
        removed += [path for _, path in entries[self.max_entries :]]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


def _touch_access_time(path: Path) -> None:
    """Record a use in atime explicitly (noatime mounts); mtime keeps meaning "parse started at"."""
    try:
        info = path.stat()
        os.utime(path, ns=(time.time_ns(), info.st_mtime_ns))
    except OSError:
        pass
