"""`python -m raylaunch` runs the `ray-ha` command."""

from raylaunch.entry import main

if __name__ == "__main__":
    main()
