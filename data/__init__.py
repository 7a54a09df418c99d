"""Data: whole datasets as uint8 tensors (datasets), a device-resident loader with batched
crop/flip augmentation (loader), and class-structured synthetic data (synthetic)."""
from .datasets import DATASETS, Dataset, load_dataset, long_tailed_subset, stratified_subset
from .loader import Loader, crop_flip
from .synthetic import SyntheticConfig, add_synthetic_arguments, synthetic_config_from_args

__all__ = ['Dataset', 'load_dataset', 'DATASETS', 'Loader', 'crop_flip',
           'stratified_subset', 'long_tailed_subset', 'SyntheticConfig', 'add_synthetic_arguments',
           'synthetic_config_from_args']
