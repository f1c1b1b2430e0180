"""Command line: `python -m gcshim demo`."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_table, run_demo

    config = DemoConfig(
        num_layers=args.layers, hidden_size=args.hidden, seq_len=args.seq, batch_size=args.batch
    )
    rows = run_demo(config, steps=args.steps, device=args.device, seed=args.seed)
    print(format_table(rows, config, args.device))
    healthy = all(row["loss_equal"] and row["max_grad_diff"] <= 1e-5 for row in rows)
    return 0 if healthy else 1


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gcshim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a small built-in transformer without and "
                                            "with gcshim and compare memory, time, gradients")
    demo.add_argument("--layers", type=_positive, default=6)
    demo.add_argument("--hidden", type=_positive, default=256)
    demo.add_argument("--seq", type=_positive, default=256)
    demo.add_argument("--batch", type=_positive, default=8)
    demo.add_argument("--steps", type=_positive, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
