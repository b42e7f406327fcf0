"""Debian's Chromium, headless, driven over the Chrome DevTools Protocol (plain Python, no pytest).

Why not Playwright: it is not in the lock and would download its own browsers; the system Chromium and a
few CDP commands (navigate, evaluate, type, screenshot) over ``websockets`` (already locked with Airflow)
are all the browser tests need. :class:`Chromium` owns one browser process group and one page.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """Chromium did not start, a page script threw, or a condition did not hold in time."""


def available() -> tuple[bool, str]:
    if not CHROMIUM.is_file():
        return False, f"{CHROMIUM} is missing (Debian package chromium)"
    return True, ""


class Chromium:
    """One headless Chromium with a fresh profile; ``page`` commands go to its single tab."""

    def __init__(self, start_timeout: float = 60) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="dlh-chromium-"))
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.socket: ClientConnection | None = None
        self._closing = contextlib.ExitStack()
        self._ids = itertools.count(1)

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        log = (self.profile.parent / f"{self.profile.name}.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                [str(CHROMIUM), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"Chromium did not open its DevTools port (exit {self.process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = self._closing.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30)
        )
        self.send("Page.enable")
        self.send("Runtime.enable")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._closing.close()
        self.socket = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.profile, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.profile.parent / f"{self.profile.name}.log").unlink()

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """One CDP command; its result (events that arrive meanwhile are dropped)."""
        if self.socket is None:
            raise BrowserError("Chromium is not running")
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            raw = self.socket.recv(timeout=max(0.1, deadline - time.monotonic()))
            reply = json.loads(raw)
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); JSON values only, no DOM nodes."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"page script failed: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, limit: float = 60) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        return _poll(lambda: self.evaluate(expression), limit, what)

    def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        self.send("Page.navigate", url=url)
        time.sleep(0.2)  # let the navigation replace the old document before readyState is read
        self.wait_for("document.readyState === 'complete'", f"{url} to load")

    def type_text(self, text: str) -> None:
        """Type into the focused element, as a keyboard would (React sees input events)."""
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def _poll(condition: Callable[[], Any], limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    last: Any = None
    while True:
        try:
            value = condition()
        except BrowserError as err:
            value, last = None, err
        if value:
            return value
        if time.monotonic() > deadline:
            raise BrowserError(
                f"gave up after {limit:.0f}s waiting for {what}" + (f" (last error: {last})" if last else "")
            )
        time.sleep(0.25)
