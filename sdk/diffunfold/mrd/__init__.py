"""Beside the scanner: MRD (ISMRMRD) raw data, streaming and image outputs.

* :mod:`.rawfile` reads raw MRD HDF5 files; :mod:`.assemble` turns acquisitions into one
  k-space grid per slice (the same code for files and streams); :mod:`.recon` reconstructs a
  slice through the runtime and makes MRD images;
* :mod:`.server` (``diffunfold serve``) and :mod:`.client` (``diffunfold send``) speak the
  MRD streaming protocol (:mod:`.protocol`, on ``ismrmrd.serialization``);
* :mod:`.outputs` writes MRD images, fastMRI's ``reconstruction`` layout, DICOM and PNG;
* :mod:`.writer` writes phantoms and fastMRI volumes as raw MRD files.

Nothing here imports torch; ``ismrmrd`` and ``pydicom`` come with the ``mrd`` extra.
"""
