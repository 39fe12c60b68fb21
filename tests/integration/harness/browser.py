"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for the passkey tests: one
page, its WebAuthn virtual authenticators, navigation and script evaluation. Uses Debian's
`/usr/bin/chromium` and python3-websockets (asyncio API): one event loop runs in a background
thread, and every method here is synchronous.

    b = Browser.start()
    b.navigate("http://localhost:8123/login")
    auth = b.add_virtual_authenticator()
    cred = b.evaluate("agCreate(%s)" % json.dumps(options))
    b.stop()
"""

import asyncio
import concurrent.futures
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

from .processes import forget, stop_at_exit

CHROMIUM = os.environ.get("AG_CHROMIUM", "/usr/bin/chromium")
DEVTOOLS_RE = re.compile(r"DevTools listening on (ws://[^\s]+)")
START_TIMEOUT_SEC = 30.0
CALL_TIMEOUT_SEC = 30.0

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0",
)

AUTHENTICATOR_DEFAULTS = {
    "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
    "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True,
}


class BrowserError(Exception):
    """A CDP error, a rejected promise or thrown exception in the page, or a dead browser."""


class Browser:
    def __init__(self):
        self.proc = None
        self.profile = None
        self.ws_url = None
        self.page_ws_url = None
        self.stderr_lines = []
        self._loop = None
        self._thread = None
        self._ws = None
        self._reader = None
        self._ids = itertools.count(1)
        self._pending = {}   # id -> Future (loop side)
        self._waiters = []   # (method, Future) for the next event of that method
        self._stopped = False

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout=START_TIMEOUT_SEC):
        """Starts headless Chromium on a fresh profile and attaches to its page."""
        b = cls()
        stop_at_exit(b)
        try:
            b._launch(timeout)
        except BaseException:
            b.stop()
            raise
        return b

    def _launch(self, timeout):
        self.profile = tempfile.mkdtemp(prefix="ag-chromium-")
        cmd = [CHROMIUM] + list(CHROMIUM_FLAGS) + ["--user-data-dir=" + self.profile, "about:blank"]
        # Own process group: stop() ends Chromium's helpers (renderer, GPU, crashpad) too.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        found = threading.Event()

        def drain():
            for raw in iter(self.proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stderr_lines.append(line)
                m = DEVTOOLS_RE.search(line)
                if m and self.ws_url is None:
                    self.ws_url = m.group(1)
                    found.set()
            found.set()
        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(timeout) or self.ws_url is None:
            raise BrowserError("chromium did not report its DevTools URL within %.0fs (exit %r):\n%s"
                               % (timeout, self.proc.poll(), self.logs))
        http_base = "http://" + self.ws_url[len("ws://"):].split("/", 1)[0]
        self.page_ws_url = self._find_page(http_base, timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._connect(), timeout)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _find_page(self, http_base, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(http_base + "/json/list", timeout=5) as resp:
                    targets = json.loads(resp.read().decode("utf-8"))
                for t in targets:
                    if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                        return t["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrowserError("no page target at %s/json/list" % http_base)
            time.sleep(0.1)

    @property
    def logs(self):
        return "\n".join(self.stderr_lines)

    def stop(self):
        """Closes the connection, kills Chromium (its whole process group) and removes the
        profile. Idempotent; also runs at exit."""
        if self._stopped:
            return
        self._stopped = True
        forget(self)
        if self._loop is not None:
            try:
                self._run(self._close(), 5)
            except Exception:  # noqa: BLE001 - best effort
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the event-loop side ----------------------------------------------------------------

    def _run(self, coro, timeout):
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise BrowserError("browser not running")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise BrowserError("timed out after %.0fs" % timeout) from None

    async def _connect(self):
        import websockets  # Debian's python3-websockets (10.4)
        self._ws = await websockets.connect(self.page_ws_url, max_size=None, ping_interval=None,
                                            open_timeout=START_TIMEOUT_SEC)
        self._reader = asyncio.ensure_future(self._read())

    async def _close(self):
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self):
        error = BrowserError("DevTools connection closed")
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in msg:
                            fut.set_exception(BrowserError("CDP error: %s" % json.dumps(msg["error"])))
                        else:
                            fut.set_result(msg.get("result", {}))
                elif "method" in msg:
                    for entry in list(self._waiters):
                        method, fut = entry
                        if method == msg["method"]:
                            self._waiters.remove(entry)
                            if not fut.done():
                                fut.set_result(msg.get("params", {}))
        except Exception as e:  # noqa: BLE001 - ends every waiter below
            error = BrowserError("DevTools connection failed: %r" % e)
        for fut in list(self._pending.values()) + [f for _, f in self._waiters]:
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        self._waiters.clear()

    async def _send(self, method, params, wait_event=None, event_timeout=CALL_TIMEOUT_SEC):
        loop = asyncio.get_running_loop()
        event = None
        if wait_event:
            event = loop.create_future()
            self._waiters.append((wait_event, event))
        msg_id = next(self._ids)
        fut = loop.create_future()
        self._pending[msg_id] = fut
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        result = await fut
        if event is not None:
            try:
                await asyncio.wait_for(event, event_timeout)
            except asyncio.TimeoutError:
                raise BrowserError("no %s within %.0fs after %s" % (wait_event, event_timeout, method)) from None
        return result

    # -- CDP --------------------------------------------------------------------------------

    def send(self, method, params=None, timeout=CALL_TIMEOUT_SEC):
        """One CDP command on the page; returns its result, raises BrowserError on a CDP error."""
        return self._run(self._send(method, params), timeout)

    def navigate(self, url, timeout=CALL_TIMEOUT_SEC):
        """Page.navigate, then waits for Page.loadEventFired."""
        result = self._run(self._send("Page.navigate", {"url": url}, wait_event="Page.loadEventFired",
                                      event_timeout=timeout), timeout + 5)
        if result.get("errorText"):
            raise BrowserError("navigation to %s failed: %s" % (url, result["errorText"]))
        return result

    def evaluate(self, expression, timeout=CALL_TIMEOUT_SEC):
        """Evaluates `expression` in the page (awaiting it when it is a promise) and returns its
        value as JSON data; raises BrowserError with the exception text when it throws or the
        promise rejects."""
        result = self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
            "userGesture": True}, timeout=timeout)
        details = result.get("exceptionDetails")
        if details:
            raise BrowserError(self._exception_text(details))
        return result.get("result", {}).get("value")

    def _exception_text(self, details):
        """A thrown string as is; an Error or DOMException as "<name>: <message>" (an Error's
        bare name is dropped, so `new Error("InvalidStateError: ...")` reads like the
        DOMException it describes)."""
        exc = details.get("exception") or {}
        if isinstance(exc.get("value"), str):
            return exc["value"]
        if exc.get("objectId"):
            try:
                text = self.send("Runtime.callFunctionOn", {
                    "objectId": exc["objectId"], "returnByValue": True,
                    "functionDeclaration": "function () { if (this instanceof Error || this instanceof DOMException)"
                                           " return this.name === 'Error' ? String(this.message)"
                                           " : this.name + ': ' + this.message; return null; }",
                }).get("result", {}).get("value")
                if isinstance(text, str):
                    return text
            except BrowserError:
                pass
        return exc.get("description") or details.get("text") or json.dumps(details)

    # -- WebAuthn ---------------------------------------------------------------------------

    def add_virtual_authenticator(self, **overrides):
        """A CTAP2 platform authenticator with resident keys and user verification that
        answers on its own; `overrides` change its VirtualAuthenticatorOptions. Returns its id."""
        self.send("WebAuthn.enable", {"enableUI": False})
        options = dict(AUTHENTICATOR_DEFAULTS, **overrides)
        return self.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"]

    def remove_virtual_authenticator(self, auth_id):
        self.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": auth_id})

    def set_response_override_bits(self, auth_id, isBogusSignature=False, isBadUV=False, isBadUP=False):
        self.send("WebAuthn.setResponseOverrideBits", {
            "authenticatorId": auth_id, "isBogusSignature": isBogusSignature,
            "isBadUV": isBadUV, "isBadUP": isBadUP})

    def set_credential_properties(self, auth_id, credential_id, backupEligibility=None, backupState=None):
        params = {"authenticatorId": auth_id, "credentialId": credential_id}
        if backupEligibility is not None:
            params["backupEligibility"] = backupEligibility
        if backupState is not None:
            params["backupState"] = backupState
        self.send("WebAuthn.setCredentialProperties", params)

    def get_credentials(self, auth_id):
        """The authenticator's credentials (credentialId and privateKey are standard base64)."""
        return self.send("WebAuthn.getCredentials", {"authenticatorId": auth_id})["credentials"]

    def remove_credential(self, auth_id, credential_id):
        self.send("WebAuthn.removeCredential", {"authenticatorId": auth_id, "credentialId": credential_id})

    def add_credential(self, auth_id, credential):
        self.send("WebAuthn.addCredential", {"authenticatorId": auth_id, "credential": credential})
