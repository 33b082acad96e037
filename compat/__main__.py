"""Compatibility runs, each in venvs of its own.

`python -m compat deps [--oldest] [--python oldest|newest|3.X|PATH] [-- pytest args]`: the fast tests with
setup.cfg's floors (--oldest) or the newest releases.
`python -m compat ray [--versions 2.9.3,2.60.0] [--venvs DIR] [--out docs/COMPAT.md]`: the real-Ray path
on each Ray (two heads, a detached actor, kill -9 of the leader, `ray-ha stop`).
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from compat import deps


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    dep = sub.add_parser("deps", help="the fast tests with the floors or the newest releases")
    dep.add_argument("--oldest", action="store_true", help="pin every requirement to its floor in setup.cfg")
    dep.add_argument("--python", default="newest",
                     help="oldest, newest (of the Pythons found that setup.cfg allows), 3.X, or a path [newest]")
    dep.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    ray = sub.add_parser("ray", help="the real-Ray path on each Ray in a list")
    ray.add_argument("--versions", default=None, help="comma-separated Ray versions [2.9.3,...,2.60.0]")
    ray.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "ray-ha-compat",
                     help="where each Ray's venv is made and kept [~/.cache/ray-ha-compat]")
    ray.add_argument("--out", type=Path, help="write the table into this Markdown file (docs/COMPAT.md)")
    args = parser.parse_args(argv)
    if args.what == "deps":
        return deps.run(args.python, args.oldest, args.pytest_args)
    return run_ray(args.versions, args.venvs, args.out)


def run_ray(versions: str, venvs: Path, out: Path) -> int:
    from compat import rayrun

    chosen = [v.strip() for v in versions.split(",")] if versions else list(rayrun.DEFAULT_VERSIONS)
    results = rayrun.run(chosen, venvs)
    table = rayrun.render(results, sys.version.split()[0])
    print(table)
    if out:
        rayrun.write_doc(out, table)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
