"""`python -m raylaunch` runs the `ray-ha` command."""

from raylaunch.cli import main

if __name__ == "__main__":
    main(prog_name="ray-ha")
