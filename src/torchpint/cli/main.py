"""The ``torchpint`` command."""

from __future__ import annotations

import argparse
import sys

from torchpint.cli import demo, solve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchpint", description="Parallel-in-time methods for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    solve.add_arguments(sub.add_parser("solve", help="solve a shipped problem with MGRIT"))
    demo.add_arguments(sub.add_parser("demo", help="run the main demonstration and write a report"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"solve": solve.run, "demo": demo.run}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, ArithmeticError, RuntimeError, OSError) as error:
        # Bad input and failed runs get one clear line, not a traceback.
        print(f"torchpint: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
