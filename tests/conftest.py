import torch

# As train.py, eval.py and bench.py do on the CPU (engine.device.setup): denormal arithmetic in
# the attack's first steps is ~100x slower and changes nothing the tests look at.
torch.set_flush_denormal(True)
