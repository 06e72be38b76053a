"""Reading and checking image files: decoding (PNG/JPEG/TIFF, 16-bit, DICOM), inspection and validation
before training."""
