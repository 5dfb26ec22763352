import io
import json
import unittest
from contextlib import redirect_stdout

from snakepit import _describe


class DescribeTest(unittest.TestCase):
    def setUp(self):
        self.d = _describe.describe("snakepit.tests.fixture_adapter")
        self.by_name = {c["name"]: c for c in self.d["commands"]}

    def test_commands(self):
        self.assertEqual(self.d["module"], "snakepit.tests.fixture_adapter")
        names = [c["name"] for c in self.d["commands"]]
        self.assertEqual(names, sorted(names))
        self.assertIn("ctx_info", self.by_name)
        self.assertNotIn("context_info", self.by_name)

    def test_signature_without_ctx(self):
        self.assertEqual(self.by_name["add"]["signature"], "(a, b=1)")
        self.assertEqual(self.by_name["ctx_info"]["signature"], "()")
        self.assertTrue(self.by_name["ctx_info"]["ctx"])
        self.assertFalse(self.by_name["add"]["ctx"])

    def test_kinds(self):
        self.assertEqual(self.by_name["add"]["description"], "Add two numbers.")
        self.assertEqual(self.by_name["add"]["doc"], "Add two numbers.")
        self.assertEqual(self.by_name["ctx_info"]["description"], "what the context says")
        self.assertTrue(self.by_name["count"]["stream"])
        self.assertFalse(self.by_name["count"]["async"])
        self.assertTrue(self.by_name["async_count"]["stream"])
        self.assertTrue(self.by_name["async_count"]["async"])
        self.assertFalse(self.by_name["async_add"]["stream"])

    def test_main_prints_json(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(_describe.main(["snakepit.tests.fixture_adapter"]), 0)
        self.assertEqual(json.loads(out.getvalue()), self.d)

    def test_main_usage(self):
        self.assertEqual(_describe.main([]), 2)

    def test_missing_module(self):
        with self.assertRaises(ModuleNotFoundError):
            _describe.describe("snakepit.tests.no_such_adapter")


if __name__ == "__main__":
    unittest.main()
