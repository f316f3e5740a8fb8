"""Released artifacts (qlib.release): manifest, loading with pandas/datasets, verified restore, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlib import collect as qcollect
from qlib.config import load_config
from qlib.io import write_jsonl
from qlib.release import MANIFEST, ReleaseError, release, release_dir, restore, verify
from qlib.testing.toy import ToyEnv, ToyPolicy
from qlib.workbook.layout import RunPaths


def paths_at(root: Path, profile: str = "cpu") -> RunPaths:
    return RunPaths(profile, root / "runs", root / "results", root / "figures").create()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> RunPaths:
    """A small run: toy MCTS trees, pairs, episode rows, demos, a small and a large Q model."""
    paths = paths_at(tmp_path_factory.mktemp("run"))
    config = load_config("smoke", {"mcts.iterations": 4, "mcts.n_candidates": 3, "seed": 5})
    qcollect.collect("toy", "train", config=config, out_dir=paths.trees("toy"), policy=ToyPolicy(),
                     env_factory=lambda: ToyEnv(max_steps=4, length=2, n_tasks=(3, 1, 1)))
    write_jsonl([{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                  "rejected": [{"role": "assistant", "content": "b"}], "q_chosen": 1.0, "q_rejected": 0.0}],
                paths.pairs("toy", "step"))
    write_jsonl([{"prompt": [{"role": "user", "content": "q"}], "completion": "a", "q": 0.5}],
                paths.pairs("toy", "qnet"))  # rebuilt from the trees by notebook 02: not released
    write_jsonl([{"env": "toy", "task_id": t, "method": "greedy", "reward": 0.5, "wall_s": 2.5,
                  "trajectory": [{"action": "a", "observation": "o"}]} for t in range(4)],
                paths.episodes("table2", "toy"))
    write_jsonl([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]}],
                paths.demos("toy"))
    small, large = paths.qmodel("toy", "step"), paths.qmodel("toy", "full")
    comparison = paths.qmodel("toy", "step_init_base_4pairs")  # notebook 03's init comparison: small, not released
    for folder, size in ((small, 1000), (large, 3 * 2**20), (comparison, 1000)):
        (folder / "trainer" / "checkpoint-1").mkdir(parents=True)
        (folder / "trainer" / "checkpoint-1" / "state.bin").write_bytes(b"0" * 10)
        (folder / "adapter.safetensors").write_bytes(b"w" * size)
        (folder / "qlib_config.json").write_text(json.dumps({"train_seconds": 42.0}))
    write_jsonl([{"pair": "k", "model": "m", "margin": 0.5}], small / "margins" / "toy_valid_step.jsonl")
    (small / "features.partial.pt").write_bytes(b"f")  # an unfinished run's partial file: never released
    agent = paths.runs / "finetuned" / "toy_rft"  # a fine-tuned agent: its adapter, not what an export rebuilds
    for part, data in (("adapter/adapter_model.safetensors", b"a"), ("merged/model.safetensors", b"m" * 10),
                       ("model.gguf", b"g"), ("model.gguf.json", b"{}"),
                       ("qlib_config.json", json.dumps({"train_seconds": 8.0}).encode())):
        (agent / part).parent.mkdir(parents=True, exist_ok=True)
        (agent / part).write_bytes(data)
    unfinished = paths.qmodel("toy", "qnet")  # no qlib_config.json yet: still training
    unfinished.mkdir(parents=True)
    (unfinished / "features.partial.pt").write_bytes(b"f")
    return paths


def test_release_writes_a_manifest_with_hashes_rows_and_compute(run_dir):
    manifest = release(run_dir, commit="abc1234", seed=5, max_model_mb=1)
    files = manifest["files"]
    assert manifest["profile"] == "cpu" and manifest["commit"] == "abc1234" and manifest["seed"] == 5
    assert set(files) == {"trees/toy_train.jsonl", "pairs/toy_train_step.jsonl", "episodes/table2_toy.jsonl",
                          "demos/toy_train.jsonl", "qmodels/toy_step/adapter.safetensors",
                          "qmodels/toy_step/qlib_config.json", "qmodels/toy_step/margins/toy_valid_step.jsonl",
                          "finetuned/toy_rft/adapter/adapter_model.safetensors", "finetuned/toy_rft/qlib_config.json"}
    # 3 MiB > 1 MiB; the init comparison's models are not released; checkpoints and unfinished models never are
    assert manifest["models_not_released"] == ["qmodels/toy_full", "qmodels/toy_qnet",
                                               "qmodels/toy_step_init_base_4pairs"]
    trees = [json.loads(p.read_text()) for p in sorted(run_dir.trees("toy").glob("*.json"))]
    assert files["trees/toy_train.jsonl"]["rows"] == 3
    assert files["trees/toy_train.jsonl"]["compute_s"] == pytest.approx(sum(t["stats"]["seconds"] for t in trees), abs=1e-2)
    assert files["episodes/table2_toy.jsonl"] == {**files["episodes/table2_toy.jsonl"], "rows": 4, "compute_s": 10.0}
    assert manifest["compute_s"]["qmodels"] == 42.0 and manifest["compute_s"]["finetuned"] == 8.0
    assert manifest["compute_s"]["total"] == pytest.approx(sum(manifest["compute_s"][k] for k in
                                                               ("demos", "trees", "pairs", "episodes", "qmodels",
                                                                "finetuned")))
    on_disk = json.loads((release_dir(run_dir) / MANIFEST).read_text())
    assert on_disk == manifest and verify(release_dir(run_dir), profile="cpu", seed=5) == manifest


def test_released_jsonl_loads_with_pandas_and_datasets(run_dir):
    import pandas as pd
    from datasets import load_dataset

    release(run_dir, commit="abc1234", seed=5)
    for rel in ("trees/toy_train.jsonl", "episodes/table2_toy.jsonl", "pairs/toy_train_step.jsonl"):
        path = str(release_dir(run_dir) / rel)
        frame = pd.read_json(path, lines=True)
        data = load_dataset("json", data_files=path, split="train")
        assert len(frame) == len(data) > 0
    trees = pd.read_json(release_dir(run_dir) / "trees/toy_train.jsonl", lines=True)
    assert set(trees["task_id"]) == {0, 1, 2} and all(len(n) > 1 for n in trees["nodes"])


def test_restore_into_an_empty_runs_folder_gives_the_same_files(run_dir, tmp_path):
    release(run_dir, commit="abc1234", seed=5, max_model_mb=1)
    fresh = RunPaths("cpu", tmp_path / "runs", run_dir.results, run_dir.figures)
    done = restore(fresh, seed=5)
    assert done["restored"] == 3 + 8 and done["present"] == 0  # 3 trees, pairs, episodes, demos, 3 Q model files
    # (margins too), 2 of the fine-tuned agent
    for tree in sorted(run_dir.trees("toy").glob("*.json")):
        assert json.loads((fresh.trees("toy") / tree.name).read_text()) == json.loads(tree.read_text())
    assert fresh.episodes("table2", "toy").read_bytes() == run_dir.episodes("table2", "toy").read_bytes()
    assert (fresh.qmodel("toy", "step") / "adapter.safetensors").is_file()
    assert (fresh.runs / "finetuned" / "toy_rft" / "adapter" / "adapter_model.safetensors").read_bytes() == b"a"
    assert restore(fresh, seed=5) == {**done, "restored": 0, "present": 11}  # idempotent
    with open(fresh.episodes("table2", "toy"), "a") as handle:  # the run went on: rows appended since
        handle.write('{"env": "toy", "task_id": 9, "reward": 1.0, "wall_s": 1.0}\n')
    assert restore(fresh, seed=5)["present"] == 11


def test_restore_refuses_corrupt_files_other_seeds_and_other_runs(run_dir, tmp_path):
    release(run_dir, commit="abc1234", seed=5)
    fresh = RunPaths("cpu", tmp_path / "runs", run_dir.results, run_dir.figures)
    with pytest.raises(ReleaseError, match="seed 5.*uses 6"):
        restore(fresh, seed=6)
    with pytest.raises(ReleaseError, match="profile 'cpu'"):
        restore(RunPaths("paper", tmp_path / "p", run_dir.results, run_dir.figures))
    # another run's episodes already in runs/: nothing is copied, the error names the file
    other = fresh.episodes("table2", "toy")
    other.parent.mkdir(parents=True)
    other.write_text('{"env": "toy", "task_id": 0, "reward": 1.0}\n')
    with pytest.raises(ReleaseError, match="table2_toy.jsonl differs from the release"):
        restore(fresh, seed=5)
    assert not fresh.trees("toy").exists()
    # a corrupt release file
    episodes = release_dir(run_dir) / "episodes/table2_toy.jsonl"
    episodes.write_text(episodes.read_text()[:-20])
    with pytest.raises(ReleaseError, match="table2_toy.jsonl does not match its sha256"):
        verify(release_dir(run_dir))
    (release_dir(run_dir) / MANIFEST).write_text("{not json")
    with pytest.raises(ReleaseError, match="not valid JSON"):
        verify(release_dir(run_dir))


def test_cli_release_and_restore(run_dir, tmp_path, monkeypatch, capsys):
    import argparse

    from qlib import release as qrelease
    from qlib.cli import add_common

    monkeypatch.setattr("qlib.workbook.layout.run_paths", lambda profile=None, create=True: run_dir)
    parser = argparse.ArgumentParser()
    add_common(parser)
    qrelease.add_arguments(parser)
    assert qrelease.run(parser.parse_args(["--profile", "cpu", "--set", "seed=5", "--max-model-mb", "1"])) == 0
    assert "released 9 files" in capsys.readouterr().out
    assert qrelease.run(parser.parse_args(["--profile", "cpu", "--set", "seed=5", "--verify"])) == 0
    assert qrelease.run(parser.parse_args(["--profile", "cpu", "--set", "seed=7", "--restore"])) == 2
    assert "seed 5" in capsys.readouterr().err


def test_results_readme_lists_released_artifacts_with_their_compute(run_dir):
    from qlib.workbook.report import released_artifacts

    release(run_dir, commit="abc1234", seed=5, max_model_mb=1)
    text = "\n".join(released_artifacts(run_dir))
    assert "commit abc1234, profile cpu, seed 5" in text
    assert "| episodes/table2_toy.jsonl | 4 | 0.00 | 10 s (0.00 h) |" in text
    assert "| qmodels/toy_step/ |  | 0.00 | 42 s (0.01 h) |" in text
    assert "| finetuned/toy_rft/ |  | 0.00 | 8 s (0.00 h) |" in text
    assert "| **total of run/** (9 files) |" in text
    assert released_artifacts(paths_at(run_dir.runs.parent / "empty")) == []
