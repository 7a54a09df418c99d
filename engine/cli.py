"""What the entry points share on the command line: a parser whose usage errors are one line,
and the run-and-report wrapper that turns a user's mistake into `error: ...` and exit status 2."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the single line `error: <message> (see --help)`."""

    def error(self, message):
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def run_main(main, errors, argv=None) -> int:
    """Call main(argv); an exception of a type in errors (a problem with the user's input,
    whose message names the fix) becomes one `error: ...` line on stderr and exit status 2.
    Returns the exit status."""
    try:
        main(argv)
    except errors as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0
