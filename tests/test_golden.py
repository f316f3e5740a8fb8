"""Behaviour pinned across refactors: the golden run (tests/golden/golden_run.py) must give
byte-identical trees, pair files and episode rows (sha256 of each, wall-clock fields stripped)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

import golden_run  # noqa: E402


def test_same_seed_gives_the_recorded_trees_pairs_and_episodes(tmp_path):
    expected = json.loads(golden_run.HASHES.read_text())
    got = golden_run.run(tmp_path)
    changed = sorted(name for name in expected if got.get(name) != expected[name])
    assert set(got) == set(expected), f"artifacts differ: {sorted(set(got) ^ set(expected))}"
    assert not changed, f"behaviour changed for {changed} (outputs kept in {tmp_path})"
