"""Diskless images: cpio archives, xz compression, kickstart parsing, kernels and their modules."""
