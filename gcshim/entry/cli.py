"""Command line: `python -m gcshim demo | run | inspect`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

from .._version import __version__


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_table, run_demo

    config = DemoConfig(
        num_layers=args.layers, hidden_size=args.hidden, seq_len=args.seq, batch_size=args.batch
    )
    rows = run_demo(config, steps=args.steps, device=args.device, seed=args.seed)
    print(format_table(rows, config, args.device))
    healthy = all(row["loss_equal"] and row["max_grad_diff"] <= 1e-5 for row in rows)
    return 0 if healthy else 1


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import build, format_inspection, inspect_model, resolve

    try:
        info = inspect_model(build(resolve(args.target)))
    except (ValueError, LookupError) as error:
        print(f"gcshim inspect: {error}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


# -- run ----------------------------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an option of the script is never taken for a prefix of one of ours
    run = argparse.ArgumentParser(
        prog="gcshim run", allow_abbrev=False,
        usage="gcshim run [options] (script | -m module) [arguments of the script ...]",
        description="Run a script (or -m module) as __main__ with gcshim.auto on. Everything "
                    "after the script path, or after -m module, is the script's own, as "
                    "python itself reads it ('--' before the script ends gcshim's options). The "
                    "options take the place of the GCSHIM_* environment variables.")
    run.add_argument("--layers", help="which layers: 'auto' (the default), or comma-separated "
                     "class-name globs ('*DecoderLayer,GPT2Block') and module paths ('blocks.*')"
                     " (GCSHIM_LAYERS)")
    run.add_argument("--reentrant", dest="reentrant", action="store_const", const=True,
                     default=None, help="reentrant checkpointing, torch's older mode "
                     "(GCSHIM_REENTRANT=1); the default is non-reentrant")
    run.add_argument("--no-reentrant", dest="reentrant", action="store_const", const=False,
                     help="non-reentrant checkpointing even where the script asks for "
                     "reentrant (GCSHIM_REENTRANT=0)")
    run.add_argument("--every", type=_positive, metavar="N",
                     help="checkpoint every N-th of the selected layers (GCSHIM_EVERY)")
    run.add_argument("--budget", metavar="SIZE", help="memory one training step may use, "
                     "such as 12GiB: gcshim checkpoints the fewest layers that fit, planned on "
                     "the second training step (GCSHIM_BUDGET)")
    run.add_argument("--offload", action="store_true", help="keep checkpointed layers' inputs "
                     "in CPU memory until backward; CUDA only (GCSHIM_OFFLOAD=1)")
    run.add_argument("--log", choices=["debug", "info", "warning", "error"],
                     help="print gcshim's log at this level to stderr (GCSHIM_LOG)")
    run.add_argument("--quiet", action="store_true", help="no one-line notice of what was "
                     "checkpointed (GCSHIM_QUIET=1); warnings still show")
    run.add_argument("-m", dest="module", metavar="module", help="run a module, as python -m "
                     "does; what follows it is the module's arguments")
    run.add_argument("script", nargs="?", help="the script to run; what follows it is the "
                     "script's arguments")
    return run


def split_run_arguments(
    argv: List[str], parser: argparse.ArgumentParser
) -> Tuple[List[str], Optional[Tuple[str, bool]], List[str]]:
    """(gcshim's options, (target, is_module) or None, the target's arguments), read the way
    python reads its own command line: gcshim's options end at the script, at `-m module`, or
    at `--` (the next word is then the script)."""
    takes_value = {option for action in parser._actions if action.nargs != 0
                   for option in action.option_strings}
    ours: List[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            rest = argv[index + 1:]
            return ours, ((rest[0], False) if rest else None), rest[1:]
        if word == "-m" or (word.startswith("-m") and not word.startswith("--")):
            module = word[2:] or (argv[index + 1] if index + 1 < len(argv) else None)
            after = index + (1 if word[2:] else 2)
            if module is None:
                ours.append(word)  # argparse says -m needs a value
                return ours, None, []
            return ours, (module, True), argv[after:]
        if not word.startswith("-") or word == "-":
            return ours, (word, False), argv[index + 1:]
        ours.append(word)
        if word in takes_value and "=" not in word:
            if index + 1 < len(argv):
                ours.append(argv[index + 1])
            index += 1
        index += 1
    return ours, None, []


def _run(argv: List[str]) -> int:
    from ..errors import GcshimConfigError
    from .runner import run
    from .settings import Settings

    parser = _run_parser()
    ours, target, rest = split_run_arguments(argv, parser)
    args = parser.parse_args(ours)  # -h and bad options exit here, as argparse does
    if target is None:
        parser.print_usage(sys.stderr)
        print("gcshim run: give a script (or -m module) to run", file=sys.stderr)
        return 2
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
    if args.quiet:
        environment["GCSHIM_QUIET"] = "1"
    try:
        Settings.from_environ({**os.environ, **environment})
    except GcshimConfigError as error:
        print(f"gcshim run: {error}", file=sys.stderr)
        return 2
    return run(target[0], rest, target[1], environment)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcshim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gcshim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = commands.add_parser(
        "demo", help="train a small built-in transformer without and with gcshim and compare "
                     "memory, time and gradients",
        description="Train a small built-in transformer for a few steps without gcshim, then "
                    "with it (both modes), and print peak memory, step time, loss and the "
                    "largest gradient difference. Exits 1 if a gradient differs.")
    demo.add_argument("--layers", type=_positive, default=6, help="transformer layers (6)")
    demo.add_argument("--hidden", type=_positive, default=256, help="hidden size (256)")
    demo.add_argument("--seq", type=_positive, default=256, help="sequence length (256)")
    demo.add_argument("--batch", type=_positive, default=8, help="batch size (8)")
    demo.add_argument("--steps", type=_positive, default=5, help="training steps per run (5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--device", default="cpu", help="torch device, such as cuda (cpu)")
    demo.set_defaults(handler=_demo)

    # parsed by _run_parser; listed here for `gcshim -h`
    commands.add_parser("run", help="run an unmodified training script with gcshim.auto on "
                                    "(gcshim run -h for its options)", add_help=False)

    inspect = commands.add_parser(
        "inspect", help="show what apply would checkpoint in a model class",
        description="Build a model class (module:Class, a transformers model or config class) on "
                    "the meta device and show what gcshim would checkpoint, with which adapter, "
                    "and what transformers' own checkpointing says. The module is imported with "
                    "a clean sys.argv.")
    inspect.add_argument("target", help="e.g. transformers:LlamaForCausalLM or mypkg.model:Net")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "run":  # the script's arguments are not gcshim's to parse
        return _run(argv[1:])
    args = _parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
