"""Shared checks for the models whose classifier size is fixed by the input size.

ResNet-18, PreAct ResNet-18 and WideResNet end with a fixed-kernel average pool
(as in the official DAFA/TRADES code), so the classifier's in_features depends
on the input resolution. Only the two resolutions the paper uses are supported:
32 (CIFAR-10/100) and 64 (STL-10 resized).
"""

FIXED_POOL_IMAGE_SIZES = (32, 64)


def pooled_features(channels: int, image_size: int, model_name: str) -> int:
    """in_features of the classifier after the official fixed-kernel pooling.

    The last feature map is image_size/8 wide and the pool kernel is a quarter
    of the 32px map, so each side keeps image_size/32 cells: 1x1 at 32px, 2x2 at
    64px (the official STL-10 models flatten that 2x2 map into the classifier).
    """
    if not isinstance(image_size, int) or image_size not in FIXED_POOL_IMAGE_SIZES:
        raise ValueError(
            f"{model_name} supports image_size in {FIXED_POOL_IMAGE_SIZES} "
            f"(32 = CIFAR, 64 = STL-10 resized), got {image_size!r}")
    cells = image_size // 32
    return channels * cells * cells
