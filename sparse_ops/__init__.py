"""Sparse tensors and ops for the FCMAE encoder, on MinkowskiEngine.

``sparse_ops.nn`` (the modules) imports MinkowskiEngine when first imported; this package
itself does not, so the dense parts of ``fcmae`` work without it.
"""

from sparse_ops.minkowski import import_minkowski

__all__ = ["import_minkowski"]
