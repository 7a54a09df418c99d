import contextlib
import os
import traceback

import pytest
import torch

# As train.py, eval.py and bench.py do on the CPU (engine.device.setup): denormal arithmetic in
# the attack's first steps is ~100x slower and changes nothing the tests look at.
torch.set_flush_denormal(True)


class _Finished:
    """A benchmark task run in the test's process: it has finished when it is started."""

    def __init__(self, returncode: int):
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode

    def terminate(self) -> None:
        pass

    def wait(self) -> int:
        return self.returncode


@pytest.fixture
def in_process(monkeypatch):
    """scripts/reproduce.py's train.py and eval.py runs inside the test's process, one after
    another, with the same arguments and their output in the same logs: for tests of the plan,
    reuse and tables, where the process boundary is not what is tested (a process each costs
    ~3 s of imports). The boundary itself is tested by the GPU program's dry runs
    (tests/test_gpu_check.py) and the kill test (tests/test_identity.py)."""
    import benchmark.processes
    import eval as eval_cli
    import train
    entry = {'train.py': train.cli, 'eval.py': eval_cli.cli}

    def start(cmd, env, log):
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                code = entry[os.path.basename(cmd[1])](cmd[2:])
            except SystemExit as err:  # a usage error, as the process would exit
                code = err.code
            except Exception:  # as an uncaught exception ends a process: its traceback, 1
                traceback.print_exc()
                code = 1
        log.flush()
        return _Finished(code)
    monkeypatch.setattr(benchmark.processes, 'start_process', start)
