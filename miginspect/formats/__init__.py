"""Declarative `construct` grammars of the QEMU migration formats.

Pure definitions named as in QEMU's source: no I/O, no printing. Every grammar
builds as well as parses. Readers live in `miginspect.inspector`.
"""
