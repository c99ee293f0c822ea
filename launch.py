"""Entry point: flags -> config -> flaxdigits.

    python launch.py --config=configs/base.py --workdir=runs/base [--config.x=y ...]

The same as the installed `flaxdigits` command and `python -m flaxdigits`: the flags and
modes live in flaxdigits/cli.py, the work in library functions that take a ConfigDict.
"""

from flaxdigits import cli

if __name__ == "__main__":
    cli.run()
