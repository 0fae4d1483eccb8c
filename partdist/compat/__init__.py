"""Drop-in replacements for functions of existing ReID codebases, computed by partdist.

Change one import to speed up an existing training script:

* :mod:`partdist.compat.alignedreid` - AlignedReID (michuanhaohao/AlignedReID and the
  widely used PyTorch reproduction huanghoujing/AlignedReID-Re-Production-Pytorch):
  ``from partdist.compat.alignedreid import global_loss, local_loss, TripletLoss, ...``
* :mod:`partdist.compat.alignedreid_repro_utils` / :mod:`partdist.compat.alignedreid_util` -
  the numpy utilities of both AlignedReID codebases (local distances, metrics, re-ranking);
* :mod:`partdist.compat.torchreid` - torchreid (KaiyangZhou/deep-person-reid):
  ``from partdist.compat.torchreid import TripletLoss``; ``install()`` reaches its engines;
* :mod:`partdist.compat.fastreid` - fast-reid (JDAI-CV/fast-reid); ``install()`` reaches its
  trainer and evaluator.

The functions keep the original names, signatures, argument order, shape conventions,
defaults and return tuples; each docstring quotes the signature it replaces. Where the
original crashes (identities with different numbers of images in a batch, an anchor
without negative) the replacement works: such anchors are left out of the losses (see
:mod:`partdist.ops.mining`).
"""

from . import alignedreid, alignedreid_repro_utils, alignedreid_util, fastreid, torchreid  # noqa: F401

__all__ = ["alignedreid", "alignedreid_repro_utils", "alignedreid_util", "fastreid", "torchreid"]
