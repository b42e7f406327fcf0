"""A dbt project from git: a ref resolved to its commit (``git ls-remote``), that commit fetched shallow.

The git CLI does the work. Credentials reach it only through its environment: a password through a
``GIT_ASKPASS`` script that prints an environment variable, an SSH key through a 0600 file in a private
temporary directory removed when the call ends. Neither is ever in git's argv (visible in ``ps``), a message
or the cache.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException

__all__ = ["GitCredentials", "fetch_commit", "git_environment", "resolve_ref"]

DEFAULT_GIT_TIMEOUT = 600.0
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_USER_ENV = "DLH_GIT_USERNAME"
_PASSWORD_ENV = "DLH_GIT_PASSWORD"
_ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*|username*) printf '%s\\n' "${_USER_ENV}" ;;
  *) printf '%s\\n' "${_PASSWORD_ENV}" ;;
esac
"""


@dataclass(frozen=True, repr=False)
class GitCredentials:
    """What an Airflow connection gives git: a login and password (HTTPS), or an SSH key and known hosts."""

    username: str | None = None
    password: str | None = None
    private_key: str | None = None
    known_hosts: str | None = None

    @classmethod
    def from_connection(cls, connection: Any) -> GitCredentials:
        """``login``/``password``, and ``private_key``/``known_hosts`` from the extra (SSH)."""
        extra = getattr(connection, "extra_dejson", None) or {}
        return cls(
            username=connection.login or None,
            password=connection.password or None,
            private_key=extra.get("private_key") or None,
            known_hosts=extra.get("known_hosts") or None,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(value for value in (self.password, self.private_key) if value)

    def __repr__(self) -> str:
        return f"GitCredentials(username={self.username!r}, password={'***' if self.password else None})"


@contextlib.contextmanager
def git_environment(credentials: GitCredentials | None) -> Iterator[dict[str, str]]:
    """The environment git runs with: never prompting, and the credentials only as described above."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GCM_INTERACTIVE": "never",
        "LC_ALL": "C",
        # No credential helper may store what the askpass script hands out.
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "advice.detachedHead",
        "GIT_CONFIG_VALUE_1": "false",
    }
    if credentials is None:
        yield env
        return
    private = Path(tempfile.mkdtemp(prefix="dlh-git-"))  # 0700
    try:
        if credentials.password is not None or credentials.username is not None:
            askpass = private / "askpass.sh"
            askpass.write_text(_ASKPASS, encoding="utf-8")
            askpass.chmod(0o700)
            env.update({"GIT_ASKPASS": str(askpass), _USER_ENV: credentials.username or "",
                        _PASSWORD_ENV: credentials.password or ""})  # fmt: skip
        if credentials.private_key is not None:
            key = private / "id"
            key.touch(mode=0o600)
            key.write_text(credentials.private_key.rstrip("\n") + "\n", encoding="utf-8")
            ssh = ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            if credentials.known_hosts is not None:
                hosts = private / "known_hosts"
                hosts.write_text(credentials.known_hosts, encoding="utf-8")
                ssh += ["-o", f"UserKnownHostsFile={hosts}", "-o", "StrictHostKeyChecking=yes"]
            else:
                ssh += ["-o", "StrictHostKeyChecking=accept-new"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        yield env
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _git(
    args: list[str], *, env: Mapping[str, str], url: str, what: str, redactor: Redactor, cwd: Path | None = None
) -> str:
    """Run git; a failure raises naming ``url`` with git's last words (secrets masked)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=dict(env), capture_output=True, text=True,
            timeout=DEFAULT_GIT_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except FileNotFoundError:
        raise DbtProjectSourceException(f"{url}: git is not installed on this worker.", url=url) from None
    except subprocess.TimeoutExpired:
        raise DbtProjectSourceException(
            f"{url}: git {what} did not finish in {DEFAULT_GIT_TIMEOUT:.0f}s.", url=url, retryable=True
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        detail = redactor(" ".join(lines[-3:])) or f"exit code {done.returncode}"
        raise DbtProjectSourceException(f"{url}: git {what} failed: {detail}", url=url)
    return done.stdout


def resolve_ref(remote: str, ref: str, *, env: Mapping[str, str], url: str, redactor: Redactor) -> str:
    """The commit ``ref`` (branch, tag, ``HEAD``, full ref or full commit id) points at in ``remote`` now.

    :param remote: The repository URL git is given.
    :param ref: The ref from the project URL.
    :param env: ``git_environment``'s environment.
    :param url: The project URL, named in errors.
    :param redactor: Masks the connection's secrets in git's messages.
    """
    if _COMMIT.match(ref):
        return ref  # a commit id never moves: nothing to ask the server
    patterns = [ref, f"{ref}^{{}}"]  # the second finds an annotated tag's commit
    listing = _git(["ls-remote", "--", remote, *patterns], env=env, url=url, what="ls-remote", redactor=redactor)
    found: dict[str, str] = {}
    for line in listing.splitlines():
        commit, _, name = line.partition("\t")
        found[name.strip()] = commit.strip()
    candidates = [ref] if ref.startswith("refs/") or ref == "HEAD" else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    for name in candidates:
        if f"{name}^{{}}" in found:  # an annotated tag: the commit it points at
            return found[f"{name}^{{}}"]
        if name in found:
            return found[name]
    raise DbtProjectSourceException(f"{url}: git ref {ref!r} does not exist in the repository.", url=url)


def fetch_commit(
    remote: str, ref: str, commit: str, into: Path, *, env: Mapping[str, str], url: str, redactor: Redactor
) -> str:
    """Check out ``commit`` (shallow, no history) into the new directory ``into``; returns the commit fetched.

    The commit is asked for by id; a server that refuses ids that are not a ref's tip gets the ref instead,
    and what it returns is the version (the ref may have moved since it was resolved).
    """
    into.mkdir(mode=0o700)
    run: dict[str, Any] = {"env": env, "url": url, "redactor": redactor, "cwd": into}
    _git(["init", "-q"], what="init", **run)
    try:
        _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", remote, commit], what="fetch", **run)
    except DbtProjectSourceException:
        if _COMMIT.match(ref):
            raise
        _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", remote, ref], what="fetch", **run)
    fetched = _git(["rev-parse", "FETCH_HEAD^{commit}"], what="rev-parse", **run).strip()
    _git(["checkout", "-q", "--detach", fetched], what="checkout", **run)
    shutil.rmtree(into / ".git")  # the tree is all dbt needs; history and credentials-free config go
    return fetched
