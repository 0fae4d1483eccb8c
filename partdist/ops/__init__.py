"""The compiled ops, one module per kernel family (each beside its ``csrc/<family>/`` folder).

* :mod:`partdist.ops.dmli` - ``csrc/dmli``: local distance matrices, DMLI, fused local distances
* :mod:`partdist.ops.mining` - ``csrc/mining``: batch-hard example mining, triplet loss
* :mod:`partdist.ops.neighborhood` - ``csrc/neighborhood``: IDLA neighborhood differences
* :mod:`partdist.ops.parts` - ``csrc/parts``: part distances (``part_dist``) and DSR (``dsr_dist``)
* :mod:`partdist.ops.rank` - ``csrc/rank``: ranking metrics (behind :func:`partdist.eval.evaluate_rank`)

Each module adds what ``torch.library`` needs from Python (fake kernels, autograd) to the
kernels registered in C++ as ``torch.ops.partdist.*`` (where each piece lives: CONTRIBUTING.md). The public names are re-exported at
``partdist.*``.
"""

# Ops with a CPU kernel and, by design, no CUDA kernel (each with the reason). Every other op
# with a CPU kernel must have a CUDA one: tools/gpu_check.py (build stage) and
# tests/tools/test_gpu_check.py check both directions against this table.
CPU_ONLY_OPS = {
    "partdist::rank_metrics": "ranking metrics of a distance matrix on the host: "
    "partdist.eval.evaluate_rank moves a CUDA matrix to the CPU (one sort per query, no GPU gain)",
}
