"""diffunfold: an inference SDK for Diff-Unfolding, a model-based diffusion solver for imaging
inverse problems (deblurring, super-resolution, inpainting, accelerated multi-coil MRI).

Subpackages: ``physics`` (forward models, array-API), ``data`` (image folders, bundled images,
fastMRI files, phantoms), ``metrics`` (PSNR/SSIM). Importing this package never imports torch.
"""

__version__ = "0.1.0"
