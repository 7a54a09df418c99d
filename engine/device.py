"""Device set-up shared by the entry points."""
import platform
import re

import torch


def resolve(name: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; ValueError for an
    unavailable 'cuda' (the entry points report it as a usage error)."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: no CUDA device is visible; use --device cpu.')
    return name


def setup(name: str, tf32: bool = False) -> torch.device:
    """torch.device for 'auto' | 'cuda' | 'cpu', with the per-device speed settings.

    CPU: flush denormals to zero. The TRADES attack starts 0.001 from x, where the KL and its
    gradients are ~1e-30 and below; denormal arithmetic made a CPU iteration ~100x slower
    (5.5 s vs 54 ms, small-cnn, batch 32). Values under 1e-38 becoming 0 changes nothing else.
    Call it before any torch computation: the setting is per thread, and torch's OpenMP
    workers inherit it only if they are started after it (a worker started earlier computed
    its share at denormal speed: a CPU epoch of 139 s instead of 4 s).
    CUDA: cuDNN autotuning (fixed input shapes), and TF32 in convolutions and matmuls only when
    asked (train.py --tf32 or --fast): PyTorch alone lets cuDNN use TF32, which the paper's
    PyTorch (before Ampere's TF32) never did.
    """
    device = torch.device(resolve(name))
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    else:
        torch.set_flush_denormal(True)
    return device


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """The machine's arithmetic, recorded beside every run and result as provenance (not
    identity: two seeds from two machines are one experiment). oneDNN picks its kernels by
    torch's CPU capability (AVX2, AVX512, AMX, ...) and float sums then round differently, so
    a CPU run repeats bit for bit only on the same code, recipe, capability and thread count."""
    config = torch.__config__.show()
    onednn = re.search(r'MKL-DNN v([0-9.]+)', config)
    info = {'device': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                       else _cpu_model()),
            'cpu_capability': torch.backends.cpu.get_cpu_capability(),
            # str: the safe checkpoint loader refuses a TorchVersion object
            'threads': torch.get_num_threads(), 'torch': str(torch.__version__),
            'onednn': onednn.group(1) if onednn else None}
    if device.type == 'cuda':
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def machine_label(info: dict) -> str:
    """'Intel(R) Xeon(R) Processor, AVX512, 2 threads' (a GPU: its name, cuDNN's version)."""
    if not info:
        return 'not recorded'
    get = info.get  # a field a record lacks (an edited file) reads as None
    if get('cudnn') is not None:
        return f"{get('device')}, cuDNN {get('cudnn')}, torch {get('torch')}"
    threads = f"{get('threads')} thread{'' if get('threads') == 1 else 's'}"
    return (f"{get('device')}, {get('cpu_capability')}, {threads}, torch "
            f"{get('torch')}")
