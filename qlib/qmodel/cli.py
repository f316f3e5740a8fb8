"""``python -m qlib train``: train a Q-value model (DPO or QNet). Importing this module loads no torch."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qlib train`` (``--profile`` / ``--set`` come from the main CLI)."""
    parser.add_argument("--pairs", required=True, help="pairs JSONL (dpo) or Bellman-Q rows JSONL (qnet)")
    parser.add_argument("--out", required=True, help="output folder of the Q model")
    parser.add_argument("--kind", choices=("dpo", "qnet"), default="dpo", help="step-level DPO (default) or QNet")
    parser.add_argument("--model", default=None, help="backbone folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop DPO after this many optimiser steps")
    parser.add_argument("--eval-pairs", default=None, help="pairs JSONL to report preference accuracy on")


def run(args: Any) -> int:
    """Train, optionally report preference accuracy; print a JSON summary as the last line."""
    from qlib.config import ConfigError, load_config, parse_overrides

    try:
        config = load_config(getattr(args, "profile", None), parse_overrides(getattr(args, "set", None)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from qlib.qmodel import load_q_model, preference_accuracy, train_dpo, train_qnet

    try:
        if args.kind == "dpo":
            out = train_dpo(args.pairs, args.out, config, model_path=args.model, max_steps=args.max_steps)
        else:
            out = train_qnet(args.pairs, args.out, config, model_path=args.model)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"kind": args.kind, "out": str(out)}
    if args.eval_pairs:
        summary["preference_accuracy"] = preference_accuracy(load_q_model(out), args.eval_pairs)
    print(json.dumps(summary))
    return 0
