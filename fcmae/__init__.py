"""FCMAE pretraining of ConvNeXt V2 on true sparse convolutions.

Public API:

* :func:`create_convnextv2` - dense ConvNeXt V2 classifier (reference dense key layout);
* :func:`create_fcmae` - FCMAE on the ``sparse`` (MinkowskiEngine) or ``dense`` engine;
* :func:`sparse_to_dense`, :func:`dense_to_sparse` - strict state-dict conversion;
* :data:`MODEL_SIZES`, :func:`get_size` - the registry of the eight sizes.
"""

from fcmae.convert import dense_to_sparse, sparse_to_dense
from fcmae.convnextv2 import ConvNeXtV2, ConvNeXtV2Encoder, create_convnextv2
from fcmae.model import ENGINES, FCMAE, create_fcmae
from fcmae.registry import MODEL_SIZES, ModelSize, get_size

__all__ = [
    "ENGINES",
    "FCMAE",
    "MODEL_SIZES",
    "ConvNeXtV2",
    "ConvNeXtV2Encoder",
    "ModelSize",
    "create_convnextv2",
    "create_fcmae",
    "dense_to_sparse",
    "get_size",
    "sparse_to_dense",
]
