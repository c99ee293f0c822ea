"""The one exception type whose message is meant for the user, not the developer."""


class FlaxDigitsError(Exception):
    """Bad input, bad config or a failed run, explained in one line.

    The message names the file, field or step at fault and what is wrong with it. The
    launcher prints it as a single line and exits non-zero, without a traceback: a traceback
    is for bugs in flaxdigits, this is for problems the user can fix.
    """


class RunStopped(FlaxDigitsError):
    """Training stopped on a signal after writing a checkpoint; rerun to resume."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for death by signal
