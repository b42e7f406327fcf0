"""git refs resolved and fetched with the git CLI (a bare repository over file://), credentials kept out of argv."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt import git_source
from dlh_airflow_common.dbt.git_source import GitCredentials, fetch_commit, git_environment, resolve_ref
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException
from remote_sources import GitRepo, project_files

NO_SECRETS = Redactor(())


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path)


def _resolve(repo: GitRepo, ref: str) -> str:
    with git_environment(None) as env:
        return resolve_ref(repo.url, ref, env=env, url=f"git+{repo.url}@{ref}", redactor=NO_SECRETS)


def test_branches_and_annotated_tags_resolve_to_their_commit(repo: GitRepo) -> None:
    first = repo.commit(project_files())
    repo.tag("v1")
    second = repo.commit({"models/more.sql": "select 2 as id\n"})
    assert _resolve(repo, "main") == second
    assert _resolve(repo, "v1") == first  # the tag object's commit, not the tag object
    assert _resolve(repo, "refs/tags/v1") == first


def test_a_full_commit_id_needs_no_server(repo: GitRepo) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    with git_environment(None) as env:
        assert resolve_ref("file:///nowhere.git", commit, env=env, url="u", redactor=NO_SECRETS) == commit


def test_a_missing_ref_is_a_typed_error_naming_the_url(repo: GitRepo) -> None:
    repo.commit(project_files())
    with pytest.raises(DbtProjectSourceException, match="git ref 'nope' does not exist") as caught:
        _resolve(repo, "nope")
    assert caught.value.url == f"git+{repo.url}@nope"


def test_an_unreachable_repository_says_what_git_said(tmp_path: Path) -> None:
    with git_environment(None) as env, pytest.raises(DbtProjectSourceException, match="ls-remote failed"):
        resolve_ref((tmp_path / "missing.git").as_uri(), "main", env=env, url="git+x", redactor=NO_SECRETS)


def test_fetch_checks_out_the_commit_without_history(repo: GitRepo, tmp_path: Path) -> None:
    first = repo.commit(project_files())
    repo.commit({"models/more.sql": "select 2 as id\n"})
    into = tmp_path / "tree"
    with git_environment(None) as env:
        fetched = fetch_commit(repo.url, first, first, into, env=env, url="u", redactor=NO_SECRETS)
    assert fetched == first
    assert (into / "dbt_project.yml").is_file()
    assert not (into / "models" / "more.sql").exists()
    assert not (into / ".git").exists()


def test_fetch_falls_back_to_the_ref_when_the_commit_is_refused(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = repo.commit(project_files())
    real = git_source._git
    asked: list[list[str]] = []

    def refusing(args: list[str], **kwargs: Any) -> str:
        asked.append(args)
        if args[0] == "fetch" and args[-1] == "f" * 40:
            raise DbtProjectSourceException("server does not allow request for unadvertised object")
        return real(args, **kwargs)

    monkeypatch.setattr(git_source, "_git", refusing)
    with git_environment(None) as env:
        fetched = fetch_commit(repo.url, "main", "f" * 40, tmp_path / "t", env=env, url="u", redactor=NO_SECRETS)
    assert fetched == head  # the ref moved since it was resolved: what was fetched is the version
    assert [args[-1] for args in asked if args[0] == "fetch"] == ["f" * 40, "main"]


def test_the_password_reaches_git_only_through_the_askpass_script() -> None:
    credentials = GitCredentials(username="deploy", password="s3cr3t-token")
    with git_environment(credentials) as env:
        askpass = Path(env["GIT_ASKPASS"])
        assert "s3cr3t-token" not in askpass.read_text()
        asked = subprocess.run([str(askpass), "Password for 'https://h': "], env=env, capture_output=True, text=True)
        user = subprocess.run([str(askpass), "Username for 'https://h': "], env=env, capture_output=True, text=True)
    assert (asked.stdout.strip(), user.stdout.strip()) == ("s3cr3t-token", "deploy")
    assert not askpass.exists()  # its private directory goes when the call ends


def test_an_ssh_key_lives_in_a_private_file_for_the_call_only() -> None:
    credentials = GitCredentials(
        private_key="-----BEGIN KEY-----\nabc\n-----END KEY-----", known_hosts="h ssh-ed25519 AAA"
    )
    with git_environment(credentials) as env:
        command = env["GIT_SSH_COMMAND"]
        key = Path(command.split(" -i ", 1)[1].split(" ", 1)[0])
        assert key.stat().st_mode & 0o077 == 0
        assert "BEGIN KEY" not in command and "StrictHostKeyChecking=yes" in command
    assert not key.exists()


def test_credentials_come_from_the_connection_and_never_show_in_repr() -> None:
    class Connection:
        login, password = "deploy", "pw-123456"
        extra_dejson = {"private_key": "KEY", "known_hosts": "HOSTS"}

    credentials = GitCredentials.from_connection(Connection())
    assert (credentials.username, credentials.private_key, credentials.known_hosts) == ("deploy", "KEY", "HOSTS")
    assert "pw-123456" not in repr(credentials)
    assert set(credentials.secrets) == {"pw-123456", "KEY"}


def test_git_messages_are_redacted(tmp_path: Path) -> None:
    secret = "tok-" + "9" * 12
    missing = (tmp_path / secret).as_uri()
    with git_environment(None) as env, pytest.raises(DbtProjectSourceException) as caught:
        resolve_ref(missing, "main", env=env, url="git+repo", redactor=Redactor([secret]))
    assert secret not in str(caught.value)
