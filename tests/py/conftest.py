"""Start the real `wisp` binary for the Python client tests.

The binary comes from $WISP_BIN (scripts/test.sh sets it), else
target/release/wisp, else target/debug/wisp. Each server listens on
127.0.0.1:0; the port is read back from its log line
`listening on http://127.0.0.1:PORT/`. Servers are stopped by PID: SIGTERM,
then SIGKILL after 8 s. A server that died during a test fails that test's
teardown, with the tail of its log.
"""

import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTEN_RE = re.compile(rb"listening on http://[^:\s]+:(\d+)")
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 8.0


def wisp_bin():
    env = os.environ.get("WISP_BIN")
    candidates = [Path(env)] if env else [REPO / "target/release/wisp", REPO / "target/debug/wisp"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    pytest.fail("wisp binary not found (tried %s); build it with `cargo build --release` "
                "or set WISP_BIN" % ", ".join(str(c) for c in candidates), pytrace=False)


class Wisp:
    """One running wisp process."""

    def __init__(self, *args, env=None):
        self.args = [str(a) for a in args]
        self.log = tempfile.NamedTemporaryFile(prefix="wisp-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        # Options come from the command line only, never from the caller's env.
        for k in list(full_env):
            if k.startswith("WISP_") and k != "WISP_BIN":
                del full_env[k]
        full_env.update(env or {})
        self.cmd = [wisp_bin(), "--bind", "127.0.0.1:0", *self.args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=full_env)
        self.port = self._wait_port()
        self.host = "127.0.0.1"
        self.http = "http://127.0.0.1:%d" % self.port
        self.ws = "ws://127.0.0.1:%d" % self.port

    def _wait_port(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(self.read_log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("wisp exited with status %s before listening: %s\n%s"
                                     % (self.proc.returncode, " ".join(self.cmd), self.log_tail()))
            time.sleep(0.02)
        self.kill()
        raise AssertionError("wisp printed no 'listening on http://...:PORT/' line within %gs: %s\n%s"
                             % (START_TIMEOUT_S, " ".join(self.cmd), self.log_tail()))

    def read_log(self):
        with open(self.log.name, "rb") as f:
            return f.read()

    def log_tail(self, n=40):
        lines = self.read_log().decode("utf-8", "replace").splitlines()
        return "--- wisp log (last %d lines) ---\n%s" % (n, "\n".join(lines[-n:]))

    def url(self, path):
        return self.ws + path

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, wait up to 8 s, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self):
        self.stop()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class Servers:
    """Starts servers for a test and stops them after it."""

    def __init__(self):
        self.started = []

    def __call__(self, *args, env=None):
        w = Wisp(*args, env=env)
        self.started.append(w)
        return w

    def close(self):
        crashed = []
        for w in self.started:
            if not w.alive() and w.proc.returncode not in (0, -signal.SIGTERM):
                crashed.append("wisp %s exited with status %s during the test\n%s"
                               % (" ".join(w.args), w.proc.returncode, w.log_tail()))
            w.cleanup()
        self.started.clear()
        if crashed:
            pytest.fail("\n".join(crashed), pytrace=False)


@pytest.fixture
def start_wisp():
    """`start_wisp(*options)` starts a wisp with those options for this test."""
    s = Servers()
    yield s
    s.close()


@pytest.fixture(scope="module")
def wisp_default():
    """A wisp with default options, shared by a module (use unique room names)."""
    s = Servers()
    yield s()
    s.close()


@pytest.fixture(scope="module")
def wisp_echo():
    """A wisp whose message limit allows the 1 MiB echo cases."""
    s = Servers()
    yield s("--max-message-bytes", "2097152")
    s.close()


@pytest.fixture
def room():
    """A room name no other test uses."""
    return "room-" + uuid.uuid4().hex[:10]
