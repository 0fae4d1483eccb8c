"""The compiled ops, one module per kernel family (each beside its ``csrc/<family>/`` folder).

* :mod:`partdist.ops.dmli` - ``csrc/dmli``: local distance matrices, DMLI, fused local distances
* :mod:`partdist.ops.mining` - ``csrc/mining``: batch-hard example mining, triplet loss
* :mod:`partdist.ops.neighborhood` - ``csrc/neighborhood``: IDLA neighborhood differences
* :mod:`partdist.ops.parts` - ``csrc/parts``: part distances (``part_dist``) and DSR (``dsr_dist``)

Each module adds what ``torch.library`` needs from Python (fake kernels, autograd) to the
kernels registered in C++ as ``torch.ops.partdist.*``. The public names are re-exported at
``partdist.*``.
"""
