#!/usr/bin/env bash
# PGD-AT on ${DATASET:-cifar10} with ResNet-18, the paper's settings; extra arguments pass through,
# e.g. bash scripts/pgd.sh --dataset folder --data_dir /path/to/cifar10-jpeg
source "$(dirname "$0")/_train.sh"
train pgd none pgd "$@"
