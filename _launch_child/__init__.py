"""Child side of ``launch``: the bootstrap that runs inside every launched process.

This package imports only the standard library, so that a child starts fast and
pays for nothing before it imports its own target (the same reason trio-parallel
keeps ``_trio_parallel_workers`` free of trio). The parent-side package
``launch`` imports the protocol from here, never the other way round.
"""
