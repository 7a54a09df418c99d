"""What the entry points share on the command line: the one exception type for a user's mistake,
a parser whose usage errors are one line, and the wrapper that prints either as `error: ...`."""
import argparse
import gc
import sys
from typing import Optional


class UserError(Exception):
    """A problem with the user's input (flags, data, a checkpoint, the run folder) or a run that
    had to stop; the message is one or two sentences that name the problem and the fix. Every
    module raises this type for such a problem; run_main prints it as one `error:` line."""


def check_finite(args, *names: str, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False) -> None:
    """UserError unless each flag --name is a finite number within [low, high] (low excluded
    with low_open): the check of a number flag."""
    for name in names:
        value = getattr(args, name)
        ok = value == value and abs(value) != float('inf')  # NaN != NaN
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bound = ('' if low is None else (f' > {low:g}' if low_open else f' >= {low:g}'))
            bound += '' if high is None else (' and' if bound else '') + f' <= {high:g}'
            finite = ' a finite number' if value != value or abs(value) == float('inf') else ''
            raise UserError(f'--{name} must be{finite}{bound}, got {value}.')


def channel_statistics(text: str) -> list:
    """argparse type of --normalize (train.py, eval.py): 'M1,M2,M3,S1,S2,S3' -> [means, stds]
    (lists, as a run's saved arguments keep them)."""
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != 6 or not all(v == v and abs(v) != float('inf') for v in values) or not all(
            v > 0 for v in values[3:]):
        raise argparse.ArgumentTypeError(
            f'{text}: pass 3 means and 3 positive stds, e.g. '
            '0.4914,0.4822,0.4465,0.2471,0.2435,0.2616')
    return [values[:3], values[3:]]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the single line `error: <message> (see --help)`."""

    def error(self, message):
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def run_main(main, argv=None) -> int:
    """Call main(argv); a UserError becomes one `error: ...` line on stderr and exit status 2,
    Ctrl-C one line and exit status 130. Returns the exit status."""
    try:
        main(argv)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted (Ctrl-C).', file=sys.stderr)
        return 130
    finally:
        # Free what a handled error's traceback held (it can hold a DistributedDataParallel
        # wrapper in a reference cycle) while the interpreter is alive: see
        # engine.distributed.shutdown.
        gc.collect()
    return 0
