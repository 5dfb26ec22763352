"""The fork server's template (_forkserver) against a socket that plays the
host: its hello, requests it refuses, reaping, and its end."""

import marshal
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import unittest

import snakepit

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(snakepit.__file__)))

# Puts the control socket on fd 3 and the lifeline on fd 4, then runs the
# template, as the host does.
_LAUNCH = textwrap.dedent("""
    import os, sys
    ctl, life = int(sys.argv[1]), int(sys.argv[2])
    os.dup2(ctl, 3)
    os.dup2(life, 4)
    os.execv(sys.executable, [sys.executable, "-P", "-m", "snakepit._forkserver"] + sys.argv[3:])
""")


class _Template:
    """A template process and the host's ends of its socket and lifeline."""

    def __init__(self, *args, paths=(), env=None):
        self.host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.settimeout(30)
        life_r, self.life_w = os.pipe()
        e = dict(os.environ if env is None else env)
        e["PYTHONPATH"] = os.pathsep.join([_PKG_ROOT] + list(paths))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(child.fileno()), str(life_r)] + list(args),
            pass_fds=(child.fileno(), life_r), env=e)
        child.close()
        os.close(life_r)

    def recv(self):
        data = self.host.recv(1 << 16)
        if not data:
            raise EOFError("template closed its socket")
        return marshal.loads(data)

    def request(self, msg, fds=()):
        socket.send_fds(self.host, [marshal.dumps(msg, 4)], list(fds))
        return self.recv()

    def wait(self):
        return self.proc.wait(timeout=30)

    def close(self):
        self.host.close()
        try:
            os.close(self.life_w)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class ForkServerTest(unittest.TestCase):

    def start(self, *args, **kw):
        t = _Template(*args, **kw)
        self.addCleanup(t.close)
        return t

    def test_hello_reports_one_thread(self):
        t = self.start("snakepit_no_such_module")
        hello = t.recv()
        self.assertEqual(hello["threads"], 1)
        self.assertEqual(hello["pid"], t.proc.pid)
        self.assertEqual(hello["python"], "%d.%d.%d" % sys.version_info[:3])

    def test_threaded_import_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "threaded_mod.py"), "w") as f:
                f.write("import threading, time\n"
                        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
            t = self.start("threaded_mod", "--import-adapter", paths=[d])
            hello = t.recv()
            self.assertGreaterEqual(hello["threads"], 2)
            self.assertEqual(t.wait(), 1)

    def test_import_error_is_reported(self):
        t = self.start("snakepit_no_such_module", "--import-adapter")
        hello = t.recv()
        self.assertIn("snakepit_no_such_module", hello["error"])
        self.assertEqual(t.wait(), 1)

    def test_unknown_and_malformed_requests_are_refused(self):
        t = self.start("snakepit_no_such_module")
        t.recv()
        self.assertEqual(t.request({"op": "format the disk"}), {"error": "unknown request"})
        self.assertEqual(t.request([1, 2, 3]), {"error": "unknown request"})
        t.host.send(b"\xff not marshal")
        self.assertEqual(t.recv(), {"error": "unknown request"})
        # Descriptors sent with a refused request are closed, not kept.
        r, w = os.pipe()
        try:
            self.assertEqual(t.request({"op": "nothing"}, [r]), {"error": "unknown request"})
        finally:
            os.close(r)
        os.close(w)
        # It still serves.
        self.assertEqual(t.request({"op": "reap", "pid": 1}), {"status": -1})

    def test_reap_of_a_stranger_is_refused(self):
        t = self.start("snakepit_no_such_module")
        t.recv()
        for pid in (os.getpid(), 0, -1, "1"):
            self.assertEqual(t.request({"op": "reap", "pid": pid}), {"status": -1}, pid)

    def test_spawn_without_descriptors_exits_and_is_reaped(self):
        t = self.start("snakepit_no_such_module")
        t.recv()
        reply = t.request({"op": "spawn", "argv": ["x"], "env": []})
        pid = reply["pid"]
        status = t.request({"op": "reap", "pid": pid})["status"]
        self.assertTrue(os.WIFEXITED(status), status)
        self.assertEqual(os.WEXITSTATUS(status), 70)
        # Reaped: not the template's child any more.
        self.assertEqual(t.request({"op": "reap", "pid": pid}), {"status": -1})

    def test_ends_with_its_socket(self):
        t = self.start("snakepit_no_such_module")
        t.recv()
        t.host.close()
        self.assertEqual(t.wait(), 0)

    def test_ends_with_its_lifeline(self):
        t = self.start("snakepit_no_such_module")
        t.recv()
        os.close(t.life_w)
        self.assertEqual(t.wait(), 0)


if __name__ == "__main__":
    unittest.main()
