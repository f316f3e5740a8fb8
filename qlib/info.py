"""``python -m qlib info``: the resolved config, the data bundle and the embedded model
(``--keys``: every config key with its type, value and help text)."""
from __future__ import annotations

import argparse
import json

from qlib.config import describe, load_config, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true", help="check the sha256 of every bundle file")
    parser.add_argument("--keys", action="store_true",
                        help="list every config key (for --set) with its type, resolved value and help, then exit")


def run(args: argparse.Namespace) -> int:
    from qlib import data, models

    config = load_config(args.profile, parse_overrides(args.set))
    if args.keys:
        for key, type_name, value, help_text in describe(config):
            print(f"{key:<28} {type_name:<22} {value!r:<24} {help_text}")
        return 0
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
