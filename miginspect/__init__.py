"""miginspect: take QEMU migration and snapshot files apart."""

__version__ = "0.1.0"
