"""A minimal headless Chromium driver over the DevTools protocol, for the real-browser tests.

No browser download and no driver binary: it starts the system's Chromium (the Debian package ``chromium``,
which ``make test`` installs where missing) with ``--remote-debugging-port`` and speaks CDP over a
websocket (``websocket-client``). Enough to open a page, evaluate JavaScript, click like a user and take a
screenshot::

    with Chromium() as browser:
        browser.open(Path("export.html").as_uri())
        n = browser.eval("document.querySelectorAll('details').length")
        browser.click("summary")
        browser.screenshot("/tmp/page.png")
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``QLIB_CHROMIUM`` if set, else the first Chromium-like executable on PATH (None if there is none)."""
    if os.environ.get("QLIB_CHROMIUM"):
        return os.environ["QLIB_CHROMIUM"]
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chromium:
    """One headless Chromium process and a CDP session on its first page (a context manager)."""

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900, timeout: float = 30.0):
        import websocket

        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("no Chromium found: install the Debian package 'chromium' (make test does)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="qlib-chromium-")
        port = free_port()
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            page = self._first_page(port)
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        except BaseException:
            self.close()
            raise
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _first_page(self, port: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Chromium exited with status {self.process.returncode} at start-up")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not open its DevTools port")
            time.sleep(0.1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and wait for its result (events that arrive meanwhile are kept in ``events``)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, name: str) -> dict[str, Any]:
        """Wait for (and consume) the first event ``name``."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for k, event in enumerate(self.events):
                if event.get("method") == name:
                    return self.events.pop(k)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {name} event")

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until the page has loaded."""
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable; promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def scroll_to(self, selector: str) -> list[float]:
        """Scroll the first element matching ``selector`` to the middle of the viewport; return a point on it
        (near its left end, where a summary's marker and text are)."""
        box = self.eval(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            if (!el) return null; el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect(); return [r.left + Math.min(r.width / 2, 40), r.top + r.height / 2]; }})()""")
        if box is None:
            raise LookupError(f"no element matches {selector!r}")
        return box

    def click(self, selector: str) -> None:
        """Scroll the first element matching ``selector`` into view and click it with the mouse."""
        box = self.scroll_to(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: str | os.PathLike, *, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
