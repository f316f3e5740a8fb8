"""The behaviour-cloned agent in every backend: a merged hf folder and a GGUF made by llama.cpp's converter.

A clone folder (written by the behaviour-cloning trainer, in the layout of the DPO Q-model trainer,
:func:`qlib.qmodel.dpo.save_dpo`)::

    <clone>/adapter/  or  <clone>/model/   a peft LoRA adapter, or full weights (safetensors)
    <clone>/tokenizer/
    <clone>/qlib_config.json               {"kind": "sft", "lora": true|false, "base_model": "smollm2-135m" | folder}

What this module adds beside it, each made on first use and remade only when its source changed::

    <clone>/merged/           LoRA clones: the adapter merged into the base, an hf folder (the hf backend loads it)
    <clone>/model.gguf        what the llamacpp backend and ``python -m qlib.agent.serve`` load
    <clone>/model.gguf.json   what the GGUF was made from: outtype, llama_cpp version, source fingerprint

``policy.model = "smollm2-135m-bc"`` (:data:`qlib.provision.CLONE_NAME`) names "the clone of the
environment at hand": ``<policy.clones>/<env>/`` (default ``runs/<profile>/clones/<env>/``), resolved
by :func:`clone_dir_for`; :func:`gguf_for` is the file the llama.cpp backend and the server load.

The GGUF is written by llama.cpp's own ``convert_hf_to_gguf.py``, from the source distribution of the
installed llama-cpp-python (so the converter and the runtime are the same llama.cpp): pip downloads the
sdist once and only the converter, its ``conversion/`` package and ``gguf-py/`` are kept, under
``<qlib cache>/llama.cpp-convert-<version>/``. A full fine-tune's ``model/`` folder is converted as it
is; a LoRA clone is merged first (peft ``merge_and_unload``): llama.cpp's runtime LoRA would need its
own adapter GGUF and costs time at every token, a merged file none. Offline, put the sdist
(``llama_cpp_python-<version>.tar.gz``) in the qlib cache folder by hand; the download error says how.

Choice of outtype, measured with ``python -m qlib.bench.clone --outtypes q8_0 f16 q4_1 --agreement 10``
(and ``make bench``) on the 2 CPU cores of the development machine, shared with another job (ranges over
3-4 runs), with a stand-in clone (the embedded base + a random rank-4 LoRA on every linear layer,
:func:`qlib.testing.clone.lora_clone`). Tokens/s of the llamacpp backend and, in brackets, the ratio to
the base GGUF (the wheel's Q4_1 file): greedy decoding of 1 and of 5 sequences after a 264-token WebShop
prompt and evaluating that prompt (best of 7-9 interleaved rounds); whole n=5 policy steps with the
in-context prompt (4 WebShop + 4 HotPotQA tasks; f16 and q4_1: one run). Agreement = states out of 20 (first steps of
10 WebShop + 10 HotPotQA test tasks, T=0, constrained) where llama.cpp's greedy action equals the hf fp32
model's (the clone's merged folder; for the base row, the embedded base)::

    outtype  size    decode, 1 seq      decode, 5 seqs      prefill             n=5 steps         agreement
    base     98 MB   86-91 (1.00)       108-112 (1.00)      231-238 (1.00)      41-42 (1.00)      15/20
    q8_0    145 MB   86-94 (0.97-1.04)   86-94 (0.80-0.85)  453-482 (1.96-2.06) 48-49 (1.17-1.18) 18/20
    f16     271 MB   67-70 (0.74-0.78)  165-171 (1.51-1.53) 560-561 (2.36-2.39) 60 (1.48)         20/20
    q4_1     98 MB   88-93 (1.00-1.02)  108-114 (0.99-1.02) 239-247 (1.01-1.05) 42 (1.03)         14/20

q8_0 is the default: the goal is ≥ 80 % of the base's tokens/s; of the outtypes that meet it in every
shape (q8_0, q4_1), q8_0 follows the hf model more closely (q4_1 re-quantises and agrees no better than
the base file does) and evaluates prompts twice as fast. f16 agrees on all 20 states and is the fastest
for batches and prompts (llama.cpp's f16 matrix-multiply path), but decodes a single sequence, the shape
of greedy evaluation, at ≈ 0.76x. Exporting takes ≈ 1.5 s to merge (+ ≈ 4 s to import torch and peft)
and ≈ 5-7 s to convert; the sdist download, once per llama_cpp version, ≈ 7-25 s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from qlib.io import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_FILE = "qlib_config.json"  # as written by qlib.qmodel.dpo.save_dpo
GGUF_FILE = "model.gguf"
MERGED_DIR = "merged"
STAMP_FILE = "qlib_source.json"  # inside merged/: what it was merged from
CONVERTER = "convert_hf_to_gguf.py"
LLAMA_CPP_PREFIX = "vendor/llama.cpp/"  # where llama.cpp sits in the llama-cpp-python sdist
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/")  # the converter and what it imports
OUTTYPES = ("q8_0", "f16", "bf16", "f32", "q4_1")  # q4_1: an f16 export quantised by llama.cpp
DEFAULT_OUTTYPE = "q8_0"
TRAIN_HINT = "train it with notebook 00_behaviour_cloning or `python -m qlib clone`"


class CloneNotFoundError(FileNotFoundError):
    """No behaviour-cloned agent where one was asked for (the message says how to make one)."""


class CloneConfigError(ValueError):
    """A clone folder whose ``qlib_config.json`` or weights are unreadable, or no environment to pick it by."""


class ConverterError(RuntimeError):
    """llama.cpp's converter could not be obtained or failed (the message says what to run)."""


# ----------------------------------------------------------------------------- finding a clone
def read_clone_config(clone_dir: str | Path) -> dict[str, Any]:
    """The ``qlib_config.json`` of a clone folder, checked: ``lora`` is a boolean and its weights exist."""
    clone = Path(clone_dir)
    if not clone.is_dir():
        raise CloneNotFoundError(f"no behaviour-cloned agent at {clone}: {TRAIN_HINT}")
    file = clone / CONFIG_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CloneNotFoundError(f"{clone} has no {CONFIG_FILE}, so it is not a saved clone: {TRAIN_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CloneConfigError(f"{file} is corrupt ({err}); retrain the clone ({TRAIN_HINT})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("lora"), bool) or not isinstance(meta.get("kind"), str):
        raise CloneConfigError(f"{file} must be a JSON object with a string 'kind' and a boolean 'lora'; got {meta!r}")
    if meta["lora"] and not isinstance(meta.get("base_model"), str):
        raise CloneConfigError(f"{file}: a LoRA clone needs 'base_model' (\"smollm2-135m\" or a folder); got {meta!r}")
    weights = clone / ("adapter" if meta["lora"] else "model")
    if not weights.is_dir():
        raise CloneConfigError(f"{clone}: {CONFIG_FILE} says lora={meta['lora']} but {weights.name}/ is missing")
    return meta


def clone_dir_for(policy: Any, env_name: str | None) -> Path:
    """``<policy.clones>/<env_name>/``, the behaviour-cloned agent that ``policy.model = CLONE_NAME`` means
    (``<policy.clones>/<env_name>/curve/<k>/`` with ``policy.clone_checkpoint = k``).

    An empty ``policy.clones`` (a bare :class:`~qlib.config.PolicyConfig`) is the default profile's
    ``runs/<profile>/clones``, as :func:`qlib.config.load_config` would fill it.
    """
    from qlib.provision import CLONE_NAME

    if env_name is None:
        raise CloneConfigError(
            f"policy.model {CLONE_NAME!r} is the behaviour-cloned agent of one environment, but no environment "
            "was given (pass env_name, e.g. make_policy(config.policy, 'webshop'), or --env to the server)"
        )
    clones = policy.clones
    if not clones:
        from qlib.config import load_config

        clones = load_config().policy.clones
    path = Path(clones).expanduser() / env_name
    checkpoint = policy.clone_checkpoint
    if checkpoint:
        path = path / "curve" / str(checkpoint)
        if not (path / CONFIG_FILE).is_file():
            saved = sorted(int(p.name) for p in path.parent.glob("*") if p.name.isdigit()) if path.parent.is_dir() else []
            raise CloneNotFoundError(
                f"policy.clone_checkpoint={checkpoint}: the clone of {env_name} has no learning-curve checkpoint "
                f"{path} (saved: {saved or 'none'}; they are made while cloning at clone.curve)")
    read_clone_config(path)
    return path


def finetuned_dir(model: str) -> Path | None:
    """The fine-tuned agent folder (:mod:`qlib.finetune`: its ``qlib_config.json`` names a ``finetune`` row) whose
    exported GGUF the model path ``model`` is, else None."""
    path = Path(model).expanduser()
    meta = _read_json(path.parent / CONFIG_FILE) if path.suffix == ".gguf" else None
    return path.parent if isinstance(meta, dict) and "finetune" in meta else None


def model_label(model: str) -> str:
    """``policy.model`` as episode rows record it: a fine-tuned agent's GGUF as ``finetuned/<folder>/<file>``,
    so rows resume in any checkout (an absolute path would tie them to one machine); any other name as given."""
    folder = finetuned_dir(model)
    return f"finetuned/{folder.name}/{Path(model).name}" if folder else model


def agent_identity(policy: Any, env_name: str | None) -> str | None:
    """Which behaviour-cloned agent ``policy.model = CLONE_NAME`` is: ``lora-r16-<hash>`` or ``full-<hash>``,
    the hash over its base model, number of demonstrations and training settings (learning-curve points
    aside), and ``-after<k>`` for a learning-curve checkpoint. For a fine-tuned agent's GGUF, ``<row>-<hash>``
    over its row, data size, seed and fine-tuning settings. None for any other model. Episode rows carry
    it, so rows of one clone never resume as another's (the name ``smollm2-135m-bc`` alone does not say
    which training made it). A clone retrained with the same settings on another machine has the same identity."""
    from qlib.provision import CLONE_NAME

    folder = finetuned_dir(policy.model)
    if folder is not None:
        meta = _read_json(folder / CONFIG_FILE)
        key = json.dumps({k: meta.get(k) for k in ("finetune", "data_rows", "data_tokens", "seed", "finetune_config")},
                         sort_keys=True)
        return f"{meta['finetune']}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    if policy.model != CLONE_NAME or env_name is None:
        return None
    meta = read_clone_config(clone_dir_for(policy, env_name))
    settings = {k: v for k, v in (meta.get("clone") or {}).items() if k != "curve"}
    key = json.dumps({"base_model": meta.get("base_model"), "demos": meta.get("demos"), "clone": settings},
                     sort_keys=True)
    kind = f"lora-r{settings.get('lora_r')}" if meta["lora"] else "full"
    seen = f"-after{meta['demos_seen']}" if "demos_seen" in meta else ""  # a learning-curve checkpoint
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:8]}{seen}"


def gguf_for(policy: Any, env_name: str | None = None) -> Path:
    """The GGUF that ``policy.model`` names: the embedded base, the environment's clone (exported on
    demand), a fine-tuned agent's ``<folder>/model.gguf`` (exported on demand, like the clone), or a path to a
    ``.gguf`` file."""
    from qlib.provision import CLONE_NAME, EMBEDDED_NAME, gguf_path

    name = policy.model
    if name == EMBEDDED_NAME:
        return gguf_path()
    if name == CLONE_NAME:
        return export_gguf(clone_dir_for(policy, env_name))
    path = Path(name).expanduser()
    folder = finetuned_dir(name)
    if folder is not None and path.name == GGUF_FILE:
        return export_gguf(folder)
    if not path.is_file():
        raise FileNotFoundError(f"policy.model {name!r} is neither {EMBEDDED_NAME!r}, {CLONE_NAME!r} nor a GGUF file")
    return path


# ----------------------------------------------------------------------------- up to date?
def fingerprint(root: Path, *names: str) -> list[list[Any]]:
    """(path, size, mtime_ns) of every file under ``root / name`` (all of ``root`` without names), paths
    relative to ``root``: what a derived file was made from.

    A retrained clone rewrites its files, so any change of content shows as a new size or mtime; comparing
    for equality (not "newer than") also catches a folder replaced by an older copy. No hashing, so asking
    costs a few stat calls even for a full model.
    """
    rows = []
    for path in [root / name for name in names] or [root]:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        rows += [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _temp_beside(path: Path, tag: str = "") -> Path:
    """A new, unique, empty hidden file next to ``path`` (to be renamed over it once complete)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{tag}.tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


# ----------------------------------------------------------------------------- merged hf folder
def merged_dir(clone_dir: str | Path) -> Path:
    """An hf folder (safetensors + tokenizer) of the clone's whole model, for transformers and the converter.

    LoRA clone: the adapter merged into its base at ``<clone>/merged/`` (made atomically, remade when the
    adapter, tokenizer or config changed). Full clone: ``<clone>/model/`` itself, with the tokenizer
    copied beside the weights if it is not there yet.
    """
    clone = Path(clone_dir)
    meta = read_clone_config(clone)
    if not meta["lora"]:
        return _with_tokenizer(clone / "model", clone / "tokenizer")
    target = clone / MERGED_DIR
    sources = {"base_model": meta["base_model"],
               "files": fingerprint(clone, CONFIG_FILE, "adapter", "tokenizer")}
    if _read_json(target / STAMP_FILE) == sources:
        return target

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.qmodel.dpo import resolve_base

    started = time.perf_counter()
    _, base_dir = resolve_base(meta["base_model"])
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, clone / "adapter").merge_and_unload()
    staging = Path(tempfile.mkdtemp(prefix=f".{MERGED_DIR}-", dir=clone))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users of the clone
    try:
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(clone / "tokenizer").save_pretrained(staging)
        _write_json(staging / STAMP_FILE, sources)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("merged the LoRA adapter of %s in %.1fs", clone, time.perf_counter() - started)
    return target


def _with_tokenizer(model_dir: Path, tokenizer_dir: Path) -> Path:
    """``model_dir``, after copying the tokenizer files into it when it has none (each copy atomic)."""
    if not (model_dir / "tokenizer_config.json").is_file() and tokenizer_dir.is_dir():
        for file in tokenizer_dir.iterdir():
            if file.is_file() and not (model_dir / file.name).exists():
                tmp = _temp_beside(model_dir / file.name)
                shutil.copy2(file, tmp)
                os.replace(tmp, model_dir / file.name)
    return model_dir


# ----------------------------------------------------------------------------- llama.cpp's converter
def converter_dir() -> Path:
    """Folder with llama.cpp's ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/`` of the installed
    llama-cpp-python version, extracted from its sdist (downloaded by pip once; cached, made atomically)."""
    from llama_cpp import __version__ as version

    from qlib.provision import cache_dir

    target = cache_dir() / f"llama.cpp-convert-{version}"
    if (target / CONVERTER).is_file():
        return target
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-sdist-", dir=cache_dir()) as download:
        sdist = _sdist(version, Path(download))
        staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-convert-", dir=cache_dir()))
        staging.chmod(0o755)
        try:
            _extract_converter(sdist, staging)
            if not (target / CONVERTER).is_file():  # another process may have finished first
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _sdist(version: str, download: Path) -> Path:
    """The llama-cpp-python ``version`` sdist: one placed in the qlib cache by hand, else downloaded by pip."""
    from qlib.provision import cache_dir

    name = f"llama_cpp_python-{version}.tar.gz"
    if (cache_dir() / name).is_file():
        return cache_dir() / name
    command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
               "--no-binary", ":all:", "--quiet", "-d", str(download)]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(download.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        by_hand = " ".join(command[:-3] + ["-d", str(cache_dir())])
        raise ConverterError(
            f"could not download the llama-cpp-python {version} source distribution, which holds llama.cpp's "
            f"GGUF converter (pip said: {(result.stderr or result.stdout).strip()[-600:]}). Fix: with network "
            f"access, run\n    {by_hand}\n(the file {name} in that folder is used from then on)"
        )
    return found[0]


def _extract_converter(sdist: Path, out: Path) -> None:
    """Extract ``vendor/llama.cpp/{convert_hf_to_gguf.py,conversion/,gguf-py/}`` of ``sdist`` into ``out``."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar:  # llama_cpp_python-<version>/vendor/llama.cpp/<path>
            inner = member.name.partition("/")[2]
            path = inner[len(LLAMA_CPP_PREFIX):]
            if inner.startswith(LLAMA_CPP_PREFIX) and path.startswith(CONVERTER_PARTS) and member.isreg():
                member.name = path
                members.append(member)
        tar.extractall(out, members=members, filter="data")
    if not (out / CONVERTER).is_file():
        raise ConverterError(f"{sdist} has no vendor/llama.cpp/{CONVERTER}")


# ----------------------------------------------------------------------------- the GGUF
def export_gguf(clone_dir: str | Path, outtype: str = DEFAULT_OUTTYPE) -> Path:
    """``<clone>/model.gguf``: the clone converted by llama.cpp's ``convert_hf_to_gguf.py``.

    Reused while ``model.gguf.json`` says it was made with this ``outtype`` and llama_cpp version from the
    merged folder as it is now; otherwise remade (a temp file, then renamed over the old one).
    """
    from llama_cpp import __version__ as version

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    clone = Path(clone_dir)
    source = merged_dir(clone)
    target, stamp = clone / GGUF_FILE, clone / f"{GGUF_FILE}.json"
    made_from = {"outtype": outtype, "llama_cpp": version, "source": fingerprint(source)}
    if target.is_file() and _read_json(stamp) == made_from:
        return target
    started = time.perf_counter()
    tmp = _temp_beside(target)
    try:
        if outtype == "q4_1":
            f16 = _temp_beside(target, ".f16")
            try:
                _convert(source, f16, "f16")
                _quantize(f16, tmp, "q4_1")
            finally:
                f16.unlink(missing_ok=True)
        else:
            _convert(source, tmp, outtype)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_json(stamp, made_from)
    log.info("exported %s (%s) in %.1fs", target, outtype, time.perf_counter() - started)
    return target


def _convert(model_dir: Path, out: Path, outtype: str) -> None:
    """Run ``convert_hf_to_gguf.py`` as a subprocess with the converter's own ``gguf-py`` first on the path."""
    tools = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tools / "gguf-py"), os.environ.get("PYTHONPATH")])),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    command = [sys.executable, str(tools / CONVERTER), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not out.is_file():
        raise ConverterError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


def _quantize(source: Path, out: Path, ftype: str) -> None:
    """Quantise a GGUF with llama.cpp's ``llama_model_quantize`` (``ftype``: e.g. ``q4_1``)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ConverterError(f"llama_model_quantize({source} -> {ftype}) failed")


# ----------------------------------------------------------------------------- python -m qlib export
def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--clone", help="clone folder (adapter/ or model/, tokenizer/, qlib_config.json)")
    where.add_argument("--env", help="export the clone of this environment from policy.clones")
    parser.add_argument("--outtype", choices=OUTTYPES, default=DEFAULT_OUTTYPE, help="GGUF weight type")


def run(args: argparse.Namespace) -> int:
    from qlib.config import load_config, parse_overrides

    try:
        clone = Path(args.clone) if args.clone else clone_dir_for(
            load_config(args.profile, parse_overrides(args.set)).policy, args.env)
        print(export_gguf(clone, args.outtype))
    except (CloneNotFoundError, CloneConfigError, ConverterError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    return 0
