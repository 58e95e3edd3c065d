"""Headless Chromium for the report tests, driven through the DevTools protocol over a pipe.

The browser runs in its own network namespace (`unshare -n`: only a loopback interface that is
down), so a request that tries to leave the machine fails -- and the DevTools protocol still
reports it (Network.requestWillBeSent / loadingFailed): the tests see every request a page makes.
It is controlled through `--remote-debugging-pipe` (file descriptors 3 and 4, put there by bash:
dash cannot redirect descriptors above 9, which pytest's capture makes ours), so no port is opened
anywhere. The browser is the one process started here and is ended by its pid.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = "chromium"


def chromium_path() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise RuntimeError("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return path


class Browser:
    """One headless Chromium; `page(url)` opens a tab and returns a Page."""

    def __init__(self, width: int = 1400, height: int = 1100):
        self._profile = tempfile.mkdtemp(prefix="nxrt-chromium-")
        r_cmd, self._w_cmd = os.pipe()
        self._r_out, w_out = os.pipe()
        flags = (f"--headless=new --no-sandbox --disable-gpu --no-first-run --no-default-browser-check "
                 f"--disable-extensions --disable-background-networking --disable-component-update "
                 f"--disable-sync --metrics-recording-only --remote-debugging-pipe "
                 f"--window-size={width},{height} --user-data-dir={self._profile}")
        self._process = subprocess.Popen(
            ["unshare", "-n", "bash", "-c", f"exec {chromium_path()} {flags} about:blank 3<&{r_cmd} 4>&{w_out}"],
            pass_fds=(r_cmd, w_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: the browser and the helpers it forks
        os.close(r_cmd)
        os.close(w_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w_cmd, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _until(self, done, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if done(message):
                    return message
                self.events.append(message)
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self._r_out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._r_out, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its pipe")
                self._buffer += chunk

    def page(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        page = Page(self, session)
        page.go(url)
        return page

    def close(self) -> None:
        import signal

        try:  # the group this pid leads: exactly the browser and the processes it started
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait(timeout=30)
        os.close(self._w_cmd)
        os.close(self._r_out)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def go(self, url: str) -> None:
        self.browser.send("Page.navigate", {"url": url}, session=self.session)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > end:
                raise TimeoutError(f"waited {timeout} s for {condition}")
            time.sleep(0.1)

    def screenshot(self, path: str | os.PathLike | None = None, full: bool = False) -> np.ndarray:
        params = {"format": "png", "captureBeyondViewport": full}
        if full:
            width, height = self.evaluate("[document.documentElement.scrollWidth, "
                                          "document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = base64.b64decode(self.browser.send("Page.captureScreenshot", params, session=self.session)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def _mine(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events if e.get("method") == method and
                e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and the browser's own error log entries."""
        said = [" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                for p in self._mine("Runtime.consoleAPICalled") if p["type"] in ("error", "warning", "assert")]
        said += [p["exceptionDetails"].get("text", "") + " " + str(p["exceptionDetails"].get("exception", {}))
                 for p in self._mine("Runtime.exceptionThrown")]
        said += [p["entry"]["text"] for p in self._mine("Log.entryAdded") if p["entry"]["level"] == "error"]
        return said

    def requests(self) -> list[str]:
        """Every URL the page asked for."""
        return [p["request"]["url"] for p in self._mine("Network.requestWillBeSent")]

    def network_requests(self) -> list[str]:
        """The URLs that would leave the machine (anything but file:, data: and blob:)."""
        return [u for u in self.requests() if not u.startswith(("file:", "data:", "blob:"))]

    def failed(self) -> list[str]:
        return [p.get("errorText", "") for p in self._mine("Network.loadingFailed")]
