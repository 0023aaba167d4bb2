"""The on-disk format: paths and metadata documents (layout), the typed manifest
(manifest), element types (dtypes), boxes and chunk records (types) and the checkpoint digest
(integrity). Everything that defines what a checkpoint is on disk lives here; it imports only
``runtime.fsutil``, ``errors`` and ``kernels``.
"""
