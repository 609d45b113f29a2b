"""The rows of docs/reliability.md that no other test covers, run through the same harness
(``scripts/reliability.py``): dn as a real process in a fresh folder, checked for one clear
error line, the right exit status, nothing half written and nothing of the user's changed."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reliability.py"
spec = importlib.util.spec_from_file_location("reliability", SCRIPT)
reliability = sys.modules["reliability"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
spec.loader.exec_module(reliability)

WITHOUT_OTHER_TESTS = [
    "slide at --mpp 32 (8 × 8 px)",
    "slide at --mpp 100 (2 × 2 px)",
    "preview folder cannot be made",
    "--mpp-override -1",
    "output folder not writable (/sys)",
    "dn info on a 1-channel model",
    "empty PNG",
    "PNG with alpha",
    "greyscale PNG",
    "16-bit PNG",
    "truncated model",
    "empty model file",
    "--level on a PNG",
    "--level and --mpp",
    "--batch-size 0",
    "--quality 0",
    "--tissue-mask with --no-tissue",
    "empty stdin",
    "folder without slides",
    "Ctrl-C while translating",
]


@pytest.mark.parametrize("name", WITHOUT_OTHER_TESTS)
def test_reliability_case(tmp_path, name):
    (case,) = [c for c in reliability.CASES if c.name == name]
    result = reliability.run_case(case, tmp_path, reliability.TIMEOUT)
    assert not result["problems"], f"{result['command']}: {result['problems']} ({result['message']})"
