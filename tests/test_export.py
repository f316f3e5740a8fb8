"""The behaviour-cloned agent in every backend: GGUF export with llama.cpp's converter, name resolution, serving.

A stand-in clone (the real embedded SmolLM2 + a seeded random non-zero LoRA, :mod:`qlib.testing.clone`)
is built and exported once per module.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")

from qlib import export  # noqa: E402
from qlib.agent.backends import make_policy  # noqa: E402
from qlib.agent.prompts import render_messages  # noqa: E402
from qlib.config import PolicyConfig, load_config  # noqa: E402
from qlib.envs.registry import make  # noqa: E402
from qlib.export import CloneConfigError, CloneNotFoundError, ConverterError, export_gguf, merged_dir  # noqa: E402
from qlib.provision import CLONE_NAME, EMBEDDED_NAME, gguf_path, load_model  # noqa: E402
from qlib.testing.clone import lora_clone  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> Path:
    """A clones folder holding one clone, for webshop."""
    root = tmp_path_factory.mktemp("clones")
    lora_clone(root / "webshop")
    return root


@pytest.fixture(scope="module")
def gguf(clones) -> Path:
    return export_gguf(clones / "webshop")


@pytest.fixture(scope="module")
def states() -> list[tuple[str, list[dict], object]]:
    """(env, messages, action space) of the first step of real WebShop test tasks (the Q model's prompt:
    no in-context examples)."""
    env = make("webshop")
    out = []
    for task in env.task_ids("test")[:3]:
        out.append(("webshop", render_messages("webshop", env.reset(task), [], icl=False), env.valid_actions()))
    return out


def config(clones: Path, backend: str, **fields) -> PolicyConfig:
    return load_config("smoke", {"policy.backend": backend, "policy.model": CLONE_NAME, "policy.clones": str(clones),
                                 "policy.max_tokens": 48, "policy.n_ctx": 2048, **fields}).policy


def test_export_writes_a_gguf_that_llama_cpp_loads(clones, gguf):
    from llama_cpp import Llama

    assert gguf == clones / "webshop" / "model.gguf" and gguf.stat().st_size > 100_000_000
    made_from = json.loads((clones / "webshop" / "model.gguf.json").read_text())
    assert made_from["outtype"] == export.DEFAULT_OUTTYPE
    llm = Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    assert llm.metadata["general.architecture"] == "llama" and "chat_template" in str(llm.metadata)
    assert llm.n_vocab() == 49152
    assert not list((clones / "webshop").glob(".*"))  # no temp files left behind


def test_gguf_gives_the_hf_clones_greedy_actions(clones, gguf, states):
    """Same parsed greedy action from llama.cpp on the GGUF as from transformers on the merged clone."""
    llama = make_policy(config(clones, "llamacpp"), "webshop")
    hf = make_policy(config(clones, "hf"), "webshop")
    for env_name, messages, space in states:
        llama.env_name = hf.env_name = env_name
        ours, theirs = (p.propose(messages, 1, temperature=0.0, action_space=space, seed=0)[0] for p in (llama, hf))
        assert ours.valid and ours.action == theirs.action, (ours.raw, theirs.raw)


def test_gguf_carries_the_adapter(clones, gguf, states):
    """The GGUF's next-token logits are those of the clone, not of the base (q8_0 rounding aside)."""
    llama = make_policy(config(clones, "llamacpp"), "webshop")
    messages = states[0][1]
    tokens = llama.tokenize(llama.render(messages))
    ours = llama._prefill(tokens)
    clone_hf = make_policy(config(clones, "hf"), "webshop").model
    base_hf, _ = load_model()
    with torch.inference_mode():
        clone_logits, base_logits = (m(torch.tensor([tokens])).logits[0, -1].numpy() for m in (clone_hf, base_hf))
    to_clone, to_base = np.abs(ours - clone_logits).mean(), np.abs(ours - base_logits).mean()
    assert to_clone < 0.5 * to_base, (to_clone, to_base)


def test_clone_name_resolves_through_the_configs_clones_folder(clones, gguf):
    llama = make_policy(config(clones, "llamacpp"), "webshop")
    assert llama.model.path_model == str(gguf)
    hf = make_policy(config(clones, "hf"), "webshop")
    assert Path(hf.model.name_or_path) == merged_dir(clones / "webshop") == clones / "webshop" / "merged"
    base = make_policy(config(clones, "llamacpp", **{"policy.model": EMBEDDED_NAME}), "webshop")
    assert base.model.path_model == str(gguf_path())


def test_default_clones_folder_is_the_profiles_run_folder(clones, monkeypatch, tmp_path):
    from qlib.workbook.layout import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    assert load_config("smoke").policy.clones == str(tmp_path / "smoke" / "clones")
    assert run_paths("smoke", create=False).clones("webshop") == tmp_path / "smoke" / "clones" / "webshop"
    (tmp_path / "cpu" / "clones").mkdir(parents=True)
    (tmp_path / "cpu" / "clones" / "webshop").symlink_to(clones / "webshop")
    bare = PolicyConfig(model=CLONE_NAME)  # clones "" = the default profile's folder
    assert export.clone_dir_for(bare, "webshop") == tmp_path / "cpu" / "clones" / "webshop"


@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_missing_clone_says_how_to_train_one(clones, backend):
    with pytest.raises(CloneNotFoundError, match="00_behaviour_cloning.*python -m qlib clone"):
        make_policy(config(clones, backend), "hotpotqa")


@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_clone_name_without_an_environment_is_an_error(clones, backend):
    with pytest.raises(CloneConfigError, match="no environment was given"):
        make_policy(config(clones, backend), None)


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "corrupt"), ('["kind", "sft"]', "JSON object"), ('{"kind": "sft", "lora": "yes"}', "boolean 'lora'"),
    ('{"kind": "sft", "lora": true}', "needs 'base_model'"), ('{"kind": "sft", "lora": false}', "model/ is missing"),
])
def test_corrupt_clone_config_is_a_clear_error(tmp_path, text, match):
    (tmp_path / "webshop" / "adapter").mkdir(parents=True)
    (tmp_path / "webshop" / "qlib_config.json").write_text(text)
    with pytest.raises(CloneConfigError, match=match):
        make_policy(PolicyConfig(model=CLONE_NAME, clones=str(tmp_path)), "webshop")


def test_second_export_reuses_the_file_and_a_changed_clone_is_remade(clones, gguf):
    before = gguf.stat().st_mtime_ns
    start = time.perf_counter()
    assert export_gguf(clones / "webshop") == gguf
    assert time.perf_counter() - start < 1.0 and gguf.stat().st_mtime_ns == before
    merged = clones / "webshop" / "merged" / "model.safetensors"
    merged_before = merged.stat().st_mtime_ns
    config_file = clones / "webshop" / "qlib_config.json"
    os.utime(config_file, ns=(config_file.stat().st_atime_ns, config_file.stat().st_mtime_ns + 10**9))  # "retrained"
    assert export_gguf(clones / "webshop") == gguf
    assert gguf.stat().st_mtime_ns != before and merged.stat().st_mtime_ns != merged_before


def test_full_clone_is_its_own_hf_folder_with_the_tokenizer_beside(clones, gguf, tmp_path):
    merged = merged_dir(clones / "webshop")
    full = tmp_path / "full"
    (full / "model").mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(merged / name, full / "model" / name)
    shutil.copytree(clones / "webshop" / "tokenizer", full / "tokenizer")
    (full / "qlib_config.json").write_text('{"kind": "sft", "lora": false, "base_model": "smollm2-135m"}')
    assert merged_dir(full) == full / "model"
    assert (full / "model" / "tokenizer_config.json").is_file() and not (full / "merged").exists()


def test_failed_sdist_download_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("QLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(export.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "Could not find a version (offline)"))
    with pytest.raises(ConverterError, match=r"(?s)offline.*pip download llama-cpp-python==0\.3\.36 --no-deps "
                                             r"--no-binary :all:.*" + str(tmp_path)):
        export.converter_dir()


def test_serve_main_serves_the_clone_under_its_name(clones, gguf, monkeypatch):
    from qlib.agent import serve

    started = {}

    class Done:
        returncode = 0

        def poll(self):
            return 0

    class FakeServer:
        process, base_url, log_path = Done(), "http://127.0.0.1:1/v1", "-"

        def log_tail(self):
            return ""

        def stop(self):
            pass

    monkeypatch.setattr(serve, "start_server", lambda model, **kw: started.update(model=model, **kw) or FakeServer())
    serve.main(["--model", CLONE_NAME, "--env", "webshop", "--clones", str(clones)])
    assert started["model"] == gguf and started["alias"] == CLONE_NAME
    serve.main([])
    assert started["model"] == gguf_path() and started["alias"] == EMBEDDED_NAME


def test_openai_backend_talks_to_the_served_clone(clones, gguf, states):
    pytest.importorskip("llama_cpp.server")
    from qlib.agent.serve import start_server

    env_name, messages, space = states[0]
    with start_server(gguf, n_ctx=2048, alias=CLONE_NAME, timeout=120) as server:
        with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
            assert [m["id"] for m in json.load(response)["data"]] == [CLONE_NAME]
        pol = make_policy(config(clones, "openai", **{"policy.base_url": server.base_url}), env_name)
        cands = pol.propose(messages, 2, temperature=1.0, action_space=space, seed=0)
    assert len(cands) == 2 and all(c.valid for c in cands)


def test_agent_identity_names_the_clone_and_changes_with_its_training(clones, tmp_path):
    from qlib.export import agent_identity

    policy = config(clones, "hf")
    ident = agent_identity(policy, "webshop")
    assert ident.startswith("lora-r") and agent_identity(policy, "webshop") == ident
    assert agent_identity(load_config("smoke").policy, "webshop") is None  # the base model has no identity
    other = tmp_path / "clones"
    shutil.copytree(clones / "webshop", other / "webshop")
    meta = json.loads((other / "webshop" / "qlib_config.json").read_text())
    meta["clone"] = {**meta.get("clone", {}), "curve": [7]}
    (other / "webshop" / "qlib_config.json").write_text(json.dumps(meta))
    assert agent_identity(config(other, "hf"), "webshop") == ident  # learning-curve points are not the agent
    meta["clone"]["learning_rate"] = 0.123
    (other / "webshop" / "qlib_config.json").write_text(json.dumps(meta))
    assert agent_identity(config(other, "hf"), "webshop") != ident


def test_clone_checkpoint_is_the_learning_curve_agent_with_its_own_identity(clones, tmp_path):
    """``policy.clone_checkpoint=k`` plays ``<clones>/<env>/curve/<k>/`` (a weaker agent of the same kind, e.g.
    notebook 01's second agent); its rows carry their own identity; a missing checkpoint is a clear error."""
    from qlib.export import agent_identity

    root = tmp_path / "clones"
    shutil.copytree(clones / "webshop", root / "webshop")
    checkpoint = root / "webshop" / "curve" / "7"
    shutil.copytree(clones / "webshop", checkpoint, ignore=shutil.ignore_patterns("curve", "merged", "*.gguf*"))
    meta = json.loads((checkpoint / "qlib_config.json").read_text())
    (checkpoint / "qlib_config.json").write_text(json.dumps({**meta, "demos_seen": 7}))
    final, early = config(root, "hf"), config(root, "hf", **{"policy.clone_checkpoint": 7})
    assert export.clone_dir_for(early, "webshop") == checkpoint
    assert export.clone_dir_for(final, "webshop") == root / "webshop"
    assert agent_identity(early, "webshop") == agent_identity(final, "webshop") + "-after7"
    with pytest.raises(CloneNotFoundError, match=r"clone_checkpoint=9.*saved: \[7\]"):
        export.clone_dir_for(config(root, "hf", **{"policy.clone_checkpoint": 9}), "webshop")
