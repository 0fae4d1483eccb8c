"""Drop-in replacements for functions of existing ReID codebases, computed by partdist.

Change one import to speed up an existing training script:

* :mod:`partdist.compat.alignedreid` - AlignedReID (michuanhaohao/AlignedReID and the
  widely used PyTorch reproduction huanghoujing/AlignedReID-Re-Production-Pytorch):
  ``from partdist.compat.alignedreid import global_loss, local_loss, TripletLoss, ...``
* :mod:`partdist.compat.torchreid` - torchreid (KaiyangZhou/deep-person-reid):
  ``from partdist.compat.torchreid import TripletLoss``

The functions keep the original names, signatures, argument order, shape conventions,
defaults and return tuples; each docstring quotes the signature it replaces. Where the
original crashes (identities with different numbers of images in a batch, an anchor
without negative) the replacement works: such anchors are left out of the losses (see
:mod:`partdist.ops.mining`).
"""

from . import alignedreid, torchreid  # noqa: F401

__all__ = ["alignedreid", "torchreid"]
