"""ofa-edge: the supernet, elastic ops and training (the "train once" half)."""

#: dataset names :func:`ofa.data.load_dataset` knows; kept here (torch-free) so the CLI can
#: list them without importing torchvision
DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder")
