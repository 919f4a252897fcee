"""Clean data for training and evaluation: image folders and the bundled scikit-image
images (``images``, ``image_datasets``), fastMRI multi-coil files (``fastmri``) and synthetic phantoms written in
the fastMRI format (``phantom``). Everything yields numpy arrays; nothing imports torch."""

from .fastmri import (
    COIL_MAP_MODES,
    FastMRIFile,
    FastMRIHeader,
    FastMRISlices,
    center_crop,
    make_ismrmrd_header,
    parse_ismrmrd_header,
    percentile_normalize,
    write_fastmri_file,
)
from .image_datasets import BundledImages, ImageDataset, ImageFolder
from .images import (
    BUNDLED_HELD_OUT,
    BUNDLED_NAMES,
    BUNDLED_TRAIN,
    bundled_image,
    load_image,
    save_image,
)
from .phantom import random_phantom, simulate_multicoil, write_phantom_dataset

__all__ = [
    "ImageDataset",
    "ImageFolder",
    "BundledImages",
    "bundled_image",
    "load_image",
    "save_image",
    "BUNDLED_NAMES",
    "BUNDLED_TRAIN",
    "BUNDLED_HELD_OUT",
    "FastMRIFile",
    "FastMRIHeader",
    "FastMRISlices",
    "write_fastmri_file",
    "parse_ismrmrd_header",
    "make_ismrmrd_header",
    "center_crop",
    "percentile_normalize",
    "COIL_MAP_MODES",
    "random_phantom",
    "simulate_multicoil",
    "write_phantom_dataset",
]
