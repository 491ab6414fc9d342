"""Container kinds: what wraps a QEMU stream (nothing, a compressor, a libvirt save
header, a qcow2 image's internal snapshot), one module per kind behind the interface
of `base` (style.md practice 15). `registry.KINDS` lists them; `source.open_source`
opens any input through them. This package's `__init__` imports nothing, so that
`source` and the kind modules can import each other's basics without a cycle.
"""
