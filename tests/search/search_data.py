"""Synthetic gallery / queries for the search tests (small, with exact ties).

Every feature value is a multiple of 1/4 in [-3, 3], so every dot product, squared norm and
squared distance is exact in float32 whatever the summation order: the distances of a pair
do not depend on how a BLAS blocks or threads its GEMMs (MKL's may differ in the last bit
from call to call otherwise), and the tests can demand bit-for-bit equal answers."""

import torch

G, Q, D, H, C = 60, 7, 16, 4, 8
# gallery rows that are exact copies of another row: equal distances to every query
DUPLICATES = {40: 3, 11: 10, 50: 10, 59: 0}


def data(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers_g = torch.randn(12, D, generator=gen, dtype=torch.float64)
    centers_l = torch.randn(12, H, C, generator=gen, dtype=torch.float64)
    ident = torch.arange(G) % 12
    gg = centers_g[ident] + 0.5 * torch.randn(G, D, generator=gen, dtype=torch.float64)
    gl = centers_l[ident] + 0.5 * torch.randn(G, H, C, generator=gen, dtype=torch.float64)
    for dst, src in DUPLICATES.items():
        gg[dst], gl[dst] = gg[src], gl[src]
    qid = torch.arange(Q) % 12
    qg = centers_g[qid] + 0.5 * torch.randn(Q, D, generator=gen, dtype=torch.float64)
    ql = centers_l[qid] + 0.5 * torch.randn(Q, H, C, generator=gen, dtype=torch.float64)
    gg, gl, qg, ql = (((t * 4).round() / 4).clamp(-3, 3) for t in (gg, gl, qg, ql))
    cams_g = torch.arange(G) % 3
    cams_q = torch.full((Q,), 5)
    return {
        "gg": gg.to(dtype), "gl": gl.to(dtype), "qg": qg.to(dtype), "ql": ql.to(dtype),
        "gpids": ident, "gcams": cams_g, "qpids": qid, "qcams": cams_q,
    }


def build(d, rows=None, dtype="float32", ids=None):
    from partdist.search import GalleryIndex

    rows = torch.arange(G) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    idx = GalleryIndex(dtype=dtype, lam=0.7)
    idx.add(d["gg"][rows], d["gl"][rows], ids=rows if ids is None else ids, pids=d["gpids"][rows],
            camids=d["gcams"][rows], paths=[f"g{int(i)}.jpg" for i in rows])
    return idx
