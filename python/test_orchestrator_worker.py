"""Tests for orchestrator_worker.py: run with `python3 -m unittest discover -s python`."""
import json
import mmap
import os
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))
import orchestrator_worker as ow  # noqa: E402


class OpenArg(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "v")
        with open(self.path, "wb") as f:
            f.write(b"a" * 64)

    def tearDown(self):
        self.dir.cleanup()

    def env(self, mode):
        args = {"data": {"path": self.path, "mode": mode, "size": 64, "shared": True}}
        return mock.patch.dict(os.environ, {"ORCHESTRATOR_ARGS": json.dumps(args)})

    def test_read_only(self):
        with self.env("r"):
            m = ow.open_arg("data")
            self.assertEqual(m[:2], b"aa")
            with self.assertRaises(TypeError):
                m[0] = ord("X")

    def test_shared_write_reaches_the_file(self):
        with self.env("r+"):
            m = ow.open_arg("data")
            m[0] = ord("X")
            m.flush()
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(1), b"X")

    def test_copy_on_write_stays_private(self):
        with self.env("c"):
            m = ow.open_arg("data")
            m[0] = ord("X")
            self.assertEqual(m[0], ord("X"))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(1), b"a")

    def test_plain_file_and_inline(self):
        with self.env(None):
            self.assertEqual(ow.open_arg("data"), b"a" * 64)
        with mock.patch.object(sys, "argv", ["app", "task=1", "name=hello"]), mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(ow.open_arg("name"), b"hello")
            with self.assertRaises(KeyError):
                ow.open_arg("missing")

    def test_context(self):
        env = {"ORCHESTRATOR_JOB_NUM": "3", "ORCHESTRATOR_SLOT": "1", "ORCHESTRATOR_OVERRIDES": '{"task": 4}'}
        with mock.patch.dict(os.environ, env, clear=True):
            ctx = ow.job_context()
        self.assertEqual((ctx["num"], ctx["slot"], ctx["overrides"]), (3, 1, {"task": 4}))

    def test_numpy_memmap_when_available(self):
        try:
            import numpy  # noqa: F401
        except ImportError:
            if os.environ.get("ORCHESTRATOR_REQUIRE_NUMPY"):
                raise
            self.skipTest("numpy not installed")
        with self.env("r"):
            arr = ow.as_numpy("data")
            self.assertEqual(int(arr[0]), ord("a"))


if __name__ == "__main__":
    unittest.main()
