"""Tests of models/layout.py (the repository layout and publish protocol) and of build.py's
command line, on temporary folders with stand-in model files: no training, no TorchScript.

    .venv/bin/python -m unittest models.test_layout

What a user of a polling server would notice: a version that appears half-written, a model that
disappears while an old build is moved into 1/, a version.toml the server cannot parse or whose
numbers are not the ones computed, a rebuild that silently replaces a version.
"""
from __future__ import annotations

import sys
import tempfile
import tomllib
import unittest
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import layout  # noqa: E402

MANIFEST = 'kind = "tabular"\n'


class RepositoryCase(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.model = Path(self._tmp.name) / "diabetes"
        self.model.mkdir()

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.model.iterdir())

    def stage_version(self, version: int, payload: bytes = b"PK-weights", toml: str = "# v\n") -> Path:
        tmp = layout.stage(self.model, version)
        (tmp / layout.MODEL_FILE).write_bytes(payload)
        (tmp / layout.VERSION_MANIFEST).write_text(toml)
        return tmp


class PublishTest(RepositoryCase):
    def test_a_version_appears_only_when_complete(self) -> None:
        tmp = layout.stage(self.model, 1)
        self.assertEqual(tmp.name, ".1.tmp")
        (tmp / layout.MODEL_FILE).write_bytes(b"weights")
        self.assertEqual(layout.versions(self.model), [], "a staged version is not a version")
        with self.assertRaises(FileNotFoundError):  # no version.toml yet
            layout.publish(self.model, 1)
        self.assertFalse((self.model / "1").exists())
        (tmp / layout.VERSION_MANIFEST).write_text("# v1\n")
        layout.publish(self.model, 1)
        self.assertEqual(self.entries(), ["1"])
        self.assertEqual((self.model / "1" / layout.MODEL_FILE).read_bytes(), b"weights")

    def test_an_interrupted_build_is_started_over(self) -> None:
        stale = layout.staging_dir(self.model, 2)
        stale.mkdir()
        (stale / "half.pt").write_bytes(b"half")
        tmp = layout.stage(self.model, 2)
        self.assertEqual(list(tmp.iterdir()), [])

    def test_an_existing_version_is_replaced_only_when_asked(self) -> None:
        self.stage_version(2, b"old")
        layout.publish(self.model, 2)
        self.stage_version(2, b"new")
        with self.assertRaises(FileExistsError):
            layout.publish(self.model, 2)
        self.assertEqual((self.model / "2" / layout.MODEL_FILE).read_bytes(), b"old")
        layout.publish(self.model, 2, replace=True)
        self.assertEqual((self.model / "2" / layout.MODEL_FILE).read_bytes(), b"new")
        self.assertEqual(self.entries(), ["2"], "no staging or retired folder left behind")

    def test_versions_are_positive_integer_folders(self) -> None:
        for name in ["1", "2", "10", "0", "01", "-3", "v4", ".5.tmp", "latest"]:
            (self.model / name).mkdir()
        (self.model / "7").write_text("a file, not a folder")
        self.assertEqual(layout.versions(self.model), [1, 2, 10])

    def test_built_means_version_files_and_shared_files(self) -> None:
        self.assertFalse(layout.is_built(self.model, 1))
        self.stage_version(1)
        layout.publish(self.model, 1)
        self.assertFalse(layout.is_built(self.model, 1), "model.toml is written last")
        (self.model / layout.MANIFEST).write_text(MANIFEST)
        self.assertTrue(layout.is_built(self.model, 1))
        self.assertFalse(layout.is_built(self.model, 1, ["tokenizer.json"]))
        self.assertFalse(layout.is_built(self.model, 2))

    def test_write_atomic_leaves_no_dot_file(self) -> None:
        target = self.model / layout.MANIFEST
        target.write_text("old")
        layout.write_atomic(target, "new")
        self.assertEqual(target.read_text(), "new")
        self.assertEqual(self.entries(), [layout.MANIFEST])


class MigrationTest(RepositoryCase):
    def test_a_flat_build_moves_into_version_1_and_the_model_never_vanishes(self) -> None:
        (self.model / layout.MODEL_FILE).write_bytes(b"flat weights")
        (self.model / layout.MANIFEST).write_text(MANIFEST)
        self.assertTrue(layout.has_flat_build(self.model))
        seen = {}

        def goldens(staged: Path) -> str:
            # What a server polling right now would see: still the flat file, no version yet.
            seen["flat"] = (self.model / layout.MODEL_FILE).read_bytes()
            seen["versions"] = layout.versions(self.model)
            seen["staged"] = staged.read_bytes()
            return "[[self_test]]\nrows = [[1.0]]\nexpected = [[2.0]]\ntolerance = 0.0001\n"

        layout.migrate_flat(self.model, goldens)
        self.assertEqual(seen, {"flat": b"flat weights", "versions": [], "staged": b"flat weights"})
        self.assertEqual(self.entries(), ["1", layout.MANIFEST])
        self.assertEqual((self.model / "1" / layout.MODEL_FILE).read_bytes(), b"flat weights")
        self.assertTrue(layout.is_built(self.model, 1))
        self.assertFalse(layout.has_flat_build(self.model))

    def test_a_failing_golden_leaves_the_flat_build_serving(self) -> None:
        (self.model / layout.MODEL_FILE).write_bytes(b"flat weights")
        (self.model / layout.MANIFEST).write_text(MANIFEST)

        def broken(_: Path) -> str:
            raise RuntimeError("torch.jit.load failed")

        with self.assertRaises(RuntimeError):
            layout.migrate_flat(self.model, broken)
        self.assertTrue(layout.has_flat_build(self.model))
        self.assertEqual(layout.versions(self.model), [])

    def test_no_migration_beside_version_folders(self) -> None:
        (self.model / layout.MODEL_FILE).write_bytes(b"stale")
        (self.model / layout.MANIFEST).write_text(MANIFEST)
        self.stage_version(1)
        layout.publish(self.model, 1)
        self.assertFalse(layout.has_flat_build(self.model))
        with self.assertRaises(FileNotFoundError):
            layout.migrate_flat(self.model, lambda _: "")
        self.assertTrue(layout.drop_superseded_flat(self.model))
        self.assertEqual(self.entries(), ["1", layout.MANIFEST])


class VersionTomlTest(unittest.TestCase):
    def test_tabular_goldens_parse_back_exactly(self) -> None:
        expected = [[-0.9230028390884399, 0.9865029454231262], [1e-300, -0.0]]
        rows = [[58.0, 1.0, 0.627], [54.0, 0.0, 1e16]]
        text = layout.version_toml(
            "# header", [layout.self_test_table(expected, 1e-4, rows=rows)],
            layout.provenance_table("a \"quoted\" set", "80/20", "seed 7", {"accuracy": 0.7861, "roc_auc": 0.85}),
        )
        doc = tomllib.loads(text)
        self.assertEqual(doc["self_test"], [{"rows": rows, "expected": expected, "tolerance": 1e-4}])
        self.assertEqual(doc["provenance"]["metrics"], {"accuracy": 0.7861, "roc_auc": 0.85})
        self.assertEqual(doc["provenance"]["dataset"], 'a "quoted" set')
        self.assertIsInstance(doc["self_test"][0]["rows"][0][0], float, "63 is written 63.0, a TOML float")
        self.assertEqual(sorted(doc), ["provenance", "self_test"], "only keys the manifest knows")

    def test_text_goldens(self) -> None:
        texts = ["a wonderful, moving film", "caf\u00e9 \"ok\"\n"]
        doc = tomllib.loads(layout.self_test_table([[-2.5, 2.25], [0.5, -0.5]], 1e-3, texts=texts))
        self.assertEqual(doc["self_test"][0]["texts"], texts)
        self.assertEqual(doc["self_test"][0]["tolerance"], 1e-3)

    def test_bad_goldens_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            layout.self_test_table([[1.0]], 1e-4, rows=[[1.0], [2.0]])
        with self.assertRaises(ValueError):
            layout.self_test_table([[float("nan")]], 1e-4, rows=[[1.0]])
        with self.assertRaises(ValueError):
            layout.self_test_table([[1.0]], 1e-4)


class CommandLineTest(unittest.TestCase):
    """build.py's flags (imports torch, but trains nothing)."""

    def error(self, *argv: str) -> str:
        import build

        err = StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as exit_:
            build.parse_args(list(argv))
        self.assertEqual(exit_.exception.code, 2)
        return err.getvalue()

    def test_version_needs_one_tabular_model(self) -> None:
        self.assertIn("--version builds one model", self.error("--version", "2"))
        self.assertIn("--version builds one model", self.error("diabetes", "heart_disease", "--version", "2"))
        self.assertIn("sentiment is a text model", self.error("sentiment", "--version", "2"))
        self.assertIn("positive integer", self.error("diabetes", "--version", "0"))
        self.assertIn("positive integer", self.error("diabetes", "--version", "two"))
        self.assertIn("--seed goes with --version", self.error("diabetes", "--seed", "7"))
        self.assertIn("unknown model", self.error("nope"))

    def test_a_second_version(self) -> None:
        import build

        args = build.parse_args(["diabetes", "--version", "2", "--seed", "7", "--force"])
        self.assertEqual((args.names, args.version, args.seed, args.force), (["diabetes"], 2, 7, True))


if __name__ == "__main__":
    unittest.main()
