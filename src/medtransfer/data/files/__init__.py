"""Reading and checking image files: which files of a folder are data (listing), decoding (PNG/JPEG/TIFF,
16-bit and signed, DICOM; EXIF orientation, intensity windows), inspection and validation before
training; decoded images kept for the next job of a sweep."""
