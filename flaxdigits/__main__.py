"""python -m flaxdigits: the same command as launch.py and the installed `flaxdigits`."""

from flaxdigits import cli

if __name__ == "__main__":
    cli.run()
