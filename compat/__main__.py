"""`python -m compat deps [--oldest] [--python oldest|newest|3.X|PATH] [-- pytest args]`: the fast tests
in a new venv with setup.cfg's floors (--oldest) or the newest releases.
"""

from __future__ import annotations

import argparse
import sys

from compat import deps


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    dep = sub.add_parser("deps", help="the fast tests with the floors or the newest releases")
    dep.add_argument("--oldest", action="store_true", help="pin every requirement to its floor in setup.cfg")
    dep.add_argument("--python", default="newest",
                     help="oldest, newest (of the Pythons found that setup.cfg allows), 3.X, or a path [newest]")
    dep.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    return deps.run(args.python, args.oldest, args.pytest_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
