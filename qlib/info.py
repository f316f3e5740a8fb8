"""``python -m qlib info``: the resolved config, the data bundle and the embedded model."""
from __future__ import annotations

import argparse
import json

from qlib.config import load_config, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true", help="check the sha256 of every bundle file")


def run(args: argparse.Namespace) -> int:
    from qlib import data, models

    config = load_config(args.profile, parse_overrides(args.set))
    print(config.to_json())
    print("data bundle searched in:", *[str(p) for p in data.candidate_dirs()], sep="\n  ")
    if args.verify:
        for relative, path in data.verify_all().items():
            print(f"ok  {relative}  ->  {path}")
    try:
        print("gguf:", models.gguf_path())
    except models.ModelNotAvailableError as err:
        print("gguf: unavailable:", err)
    print("cache:", models.cache_dir())
    print(json.dumps({"profile": config.profile, "seed": config.seed}))
    return 0
