"""Remote dbt project sources for tests and benchmarks (plain Python, no pytest): bundles, git repos, git daemon.

``GitRepo`` is a bare repository with a work tree that commits into it; ``GitDaemon`` serves a directory of bare
repositories over ``git://`` on 127.0.0.1 (``git daemon``, part of git), ``GitHttpServer`` over smart HTTP with
Basic auth (``git http-backend``).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from loopback import LoopbackServer, free_port

PROJECT_YML = """name: {name}
profile: {name}
version: "1.0"
config-version: 2
model-paths: ["models"]
"""
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def project_files(name: str = "shop", models: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal dbt project: ``dbt_project.yml`` and its models (``models/<name>.sql``)."""
    files = {"dbt_project.yml": PROJECT_YML.format(name=name)}
    for model, sql in (models or {"orders": "select 1 as id\n"}).items():
        files[f"models/{model}.sql"] = sql
    return files


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def tar_bytes(files: Mapping[str, str | bytes], *, prefix: str = "", links: Mapping[str, str] | None = None) -> bytes:
    """A .tar.gz of ``files`` under ``prefix``; ``links`` adds symbolic links (name -> target), for refusals."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(prefix + name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            bundle.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: Mapping[str, str | bytes], *, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in files.items():
            bundle.writestr(prefix + name, content)
    return buffer.getvalue()


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


class GitRepo:
    """A bare repository (``bare``) and a work tree that commits and pushes into it."""

    def __init__(self, root: Path, name: str = "shop") -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        git("init", "-q", "--bare", "-b", "main", str(self.bare))
        git("init", "-q", "-b", "main", str(self.work))

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: Mapping[str, str | bytes], *, message: str = "change", branch: str = "main") -> str:
        """Write ``files`` into the work tree, commit them and push ``branch``; returns the commit id."""
        write_tree(self.work, files)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", str(self.bare), f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work).strip()

    def tag(self, name: str) -> None:
        git("tag", "-a", name, "-m", name, cwd=self.work)
        git("push", "-q", str(self.bare), f"refs/tags/{name}", cwd=self.work)

    def symlink(self, name: str, target: str) -> str:
        """Commit a symbolic link ``name`` -> ``target`` (a refusal case); returns the commit id."""
        (self.work / name).symlink_to(target)
        return self.commit({}, message=f"link {name}")


class GitDaemon(LoopbackServer):
    """``git daemon`` on 127.0.0.1 serving every bare repository under ``base`` (read-only, ``git://``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if shutil.which("git") is None:
            return False, "git is not installed"
        done = subprocess.run(["git", "daemon", "-h"], capture_output=True, check=False)
        if b"usage: git daemon" not in done.stdout + done.stderr:
            return False, "git daemon is not part of this git"
        return True, "git daemon available"

    def url(self, repo: GitRepo) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.bare.relative_to(self.base).as_posix()}"

    def start(self) -> Self:
        self.port = free_port()
        self._process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={self.base}", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self._process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"git daemon did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


class GitHttpServer(LoopbackServer):
    """git's smart HTTP protocol on 127.0.0.1 (``git http-backend`` behind a small HTTP server) with Basic auth:
    every request without ``username``/``password`` gets 401, as a private git host answers."""

    def __init__(self, base: Path, username: str, password: str) -> None:
        self.base = base
        self.port = 0
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.refused = 0  # requests answered 401
        self._server: ThreadingHTTPServer | None = None

    def url(self, repo: GitRepo) -> str:
        return f"http://127.0.0.1:{self.port}/{repo.bare.relative_to(self.base).as_posix()}"

    def start(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                self._backend()

            def do_POST(self) -> None:
                self._backend()

            def _backend(self) -> None:
                if self.headers.get("Authorization") != owner.expected:
                    owner.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {**os.environ, "GIT_PROJECT_ROOT": str(owner.base), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": "git", "REMOTE_ADDR": "127.0.0.1",
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}  # fmt: skip
                done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                headers = [line.split(":", 1) for line in head.decode("latin-1").split("\r\n") if ":" in line]
                status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "status":
                        self.send_header(name, value.strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
