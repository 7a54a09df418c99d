"""train.py's command line for the torchrun tests, which also fails a process that exits with a
DistributedDataParallel wrapper still alive: the wrapper keeps its gloo process group, whose
worker threads then race the interpreter's exit (an abort in about 1 torchrun in 10; see
engine.distributed.shutdown). Automatic collection is off, so a wrapper kept by a reference
cycle is found every time, not only when no collection happened to run."""
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import train  # noqa: E402

if __name__ == '__main__':
    gc.disable()
    status = train.cli()
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    if alive:
        print(f'error: {alive} DistributedDataParallel wrapper(s) alive at exit', file=sys.stderr)
    sys.exit(status or (3 if alive else 0))
