"""``python -m qlib <command>``: the same library functions the notebooks call.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
those modules import nothing heavy at import time, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from qlib.config import PROFILE_NAMES, ConfigError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("qlib.info", "show the resolved config, data bundle and model locations"),
    "clone": ("qlib.clone_cli", "write expert demonstrations and behaviour-clone the agent on them"),
    "collect": ("qlib.collect", "run MCTS over tasks and write one tree JSON per task"),
    "pairs": ("qlib.pairs", "build step/trajectory preference pairs or QNet rows from trees"),
    "train": ("qlib.qmodel.cli", "train a Q-value model (step-level DPO or the Q*Agent QNet)"),
    "evaluate": ("qlib.evaluate", "run an agent over a split with a selection method"),
    "export": ("qlib.export", "export a behaviour-cloned agent to a GGUF for llama.cpp (prints its path)"),
    "release": ("qlib.release", "copy the run's trees, pairs, episodes and small models to results/artifacts/run "
                "(--restore: back into runs/)"),
    "bench": ("qlib.bench", "print benchmark ratios (last line JSON)"),
}


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="config profile (default: cpu)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set mcts.iterations=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # the stage is not built yet
            raise
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_common(command)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
