"""The ``torchpint`` command."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from torchpint.errors import TorchPintError
from torchpint.run.launch import die_with_agent, launched_by_torchrun

# Each command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
# modules are imported lazily so that ``torchpint solve`` does not load the neural-network code.
COMMANDS: dict[str, tuple[str, str]] = {
    "solve": ("torchpint.cli.solve", "solve a shipped problem with MGRIT"),
    "demo": ("torchpint.cli.demo", "run the main demonstration and write a report"),
    "paranet": ("torchpint.cli.paranet", "parareal neural networks: train, info"),
    "mgrit-train": ("torchpint.cli.mgrit_train", "training parallel across steps with MGRIT"),
    "layer-parallel": ("torchpint.cli.layer_parallel", "layer-parallel ResNets: MGRIT across layers"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but ``-1e5`` and ``-2.5E-3`` are negative numbers, not unknown options.

    argparse recognises ``-5`` and ``-0.5`` as negative numbers only; ``--lam -1e5`` then fails
    with "expected one argument".  Sub-parsers are built with the parent's class, so setting the
    pattern here fixes every command and sub-command at once.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def build_parser() -> argparse.ArgumentParser:
    from torchpint import __version__

    parser = ArgumentParser(prog="torchpint", description="Parallel-in-time methods for PyTorch")
    parser.add_argument("--version", action="version", version=f"torchpint {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        try:
            add_arguments = importlib.import_module(module).add_arguments
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            continue  # a capability not in this build yet
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def exit_code(error: BaseException) -> int:
    """2: the input cannot work (ConfigError, ValueError); 128+N: stopped by signal N; 1: the run failed."""
    from torchpint.run.launch import Interrupted

    if isinstance(error, Interrupted):
        return 128 + error.signum
    return 2 if isinstance(error, ValueError) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    die_with_agent()  # under torchrun: a killed agent must not leave this worker running
    code = _run(args)
    if launched_by_torchrun():
        # A torchrun worker ends here, without the interpreter's teardown: destroying the
        # process-group and store objects at exit aborted ranks now and then ("terminate called
        # without an active exception", SIGABRT), and torchrun then counted a finished rank as
        # failed (its peer's agent waited out the 300 s exit barrier).  Everything the command
        # writes is written and closed by now; only the standard streams need a flush.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args))
    except KeyboardInterrupt:
        print("torchpint: interrupted", file=sys.stderr)
        return 130
    except (TorchPintError, ValueError, ArithmeticError, RuntimeError, OSError) as error:
        # Bad input and failed runs get one clear line, not a traceback (ConfigError is a ValueError,
        # NonFiniteError an ArithmeticError).
        first = str(error).strip().splitlines()
        print(f"torchpint: error: {first[0] if first else type(error).__name__}", file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
