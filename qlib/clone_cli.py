"""``python -m qlib clone --env E``: expert demonstrations and behaviour cloning of one environment's agent.

The same recipes as notebook 00 (:func:`qlib.experiments.expert_demos`, :func:`qlib.experiments.clone_agents`):
demonstrations go to ``runs/<profile>/demos/<env>_train.jsonl``, the clone to ``runs/<profile>/clones/<env>/``
(existing files are reused; a clone released in ``results/artifacts`` with the same settings is restored).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qlib.envs.registry import env_names

    parser.add_argument("--env", required=True, choices=env_names(), help="environment whose agent is cloned")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop training after this many optimiser steps")


def run(args: argparse.Namespace) -> int:
    from qlib import experiments as ex
    from qlib.config import load_config, parse_overrides
    from qlib.workbook.layout import run_paths

    config = load_config(args.profile, parse_overrides(args.set))
    paths = run_paths(config.profile)
    print(ex.expert_demos(config, paths, envs=[args.env]).to_string(index=False))
    print(ex.clone_agents(config, paths, envs=[args.env], max_steps=args.max_steps).to_string(index=False))
    print(f"clone: {paths.clones(args.env)}")
    return 0
