"""Command line: `python -m gcshim demo | run | inspect`."""

from __future__ import annotations

import argparse
import json
import os
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


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import build, format_inspection, inspect_model, resolve

    try:
        info = inspect_model(build(resolve(args.target)))
    except (ValueError, LookupError) as error:
        print(f"gcshim inspect: {error}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .runner import run

    environment = {}
    for option, variable in (("layers", "GCSHIM_LAYERS"), ("every", "GCSHIM_EVERY"),
                             ("budget", "GCSHIM_BUDGET"), ("log", "GCSHIM_LOG")):
        value = getattr(args, option)
        if value is not None:
            environment[variable] = str(value)
    if args.reentrant is not None:
        environment["GCSHIM_REENTRANT"] = "1" if args.reentrant else "0"
    if args.offload:
        environment["GCSHIM_OFFLOAD"] = "1"
    if args.module is not None:
        target, is_module, rest = args.module, True, args.arguments
    elif args.arguments:
        target, is_module, rest = args.arguments[0], False, args.arguments[1:]
    else:
        print("gcshim run: give a script (or -m module) to run", file=sys.stderr)
        return 2
    from .errors import GcshimConfigError
    from .settings import Settings

    try:
        Settings.from_environ({**os.environ, **environment})
    except GcshimConfigError as error:
        print(f"gcshim run: {error}", file=sys.stderr)
        return 2
    return run(target, rest, is_module, environment)


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

    run = commands.add_parser(
        "run", help="run an unmodified training script with gcshim.auto on",
        description="Run a script (or -m module) as __main__ with gcshim.auto on; the options "
                    "take the place of the GCSHIM_* environment variables.")
    run.add_argument("--layers", help="'auto' or comma-separated class-name globs")
    run.add_argument("--reentrant", dest="reentrant", action="store_const", const=True,
                     default=None)
    run.add_argument("--no-reentrant", dest="reentrant", action="store_const", const=False)
    run.add_argument("--every", type=_positive)
    run.add_argument("--budget", help="a size such as 12GiB")
    run.add_argument("--offload", action="store_true")
    run.add_argument("--log", choices=["debug", "info", "warning", "error"])
    run.add_argument("-m", dest="module", help="run a module, as python -m does")
    run.add_argument("arguments", nargs=argparse.REMAINDER,
                     help="the script and its arguments (or the module's arguments)")
    run.set_defaults(handler=_run)

    inspect = commands.add_parser(
        "inspect", help="show what apply would checkpoint in a model class",
        description="Build a model class (module:Class, a transformers model or config class) on "
                    "the meta device and show what gcshim would checkpoint, with which adapter, "
                    "and what transformers' own checkpointing says.")
    inspect.add_argument("target", help="e.g. transformers:LlamaForCausalLM or mypkg.model:Net")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
