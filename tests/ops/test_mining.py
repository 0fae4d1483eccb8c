"""Mining family: hard_example_mining, triplet_hard_loss (values, ties, NaN, invalid
anchors, gradients, gradcheck, opcheck, compile, bad input)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import partdist
from partdist import reference as R

NAN = float("nan")

# Label configurations: equal K, unequal K, singletons, all-same, all-different, mixed.
LABELS = {
    "equal_k": torch.arange(12) // 4,
    "unequal_k": torch.tensor([3, 0, 0, 1, 3, 2, 0, 3, 1, 5, 3, 4]),
    "with_singletons": torch.tensor([0, 1, 1, 2, 3, 3, 3, 4]),
    "all_same": torch.full((6,), 7),
    "all_different": torch.arange(7) * 3 - 5,
    "two": torch.tensor([1, 2]),
    "one": torch.tensor([4]),
}


def rand_dist(N, M=None, dtype=torch.float64, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties
        d = torch.randint(0, 3, (N, N if M is None else M), generator=g).to(dtype)
    else:
        d = torch.rand(N, N if M is None else M, generator=g, dtype=torch.float64).to(dtype)
    return d


def assert_mining_equal(out, ref):
    ap, an, p, n, valid = ref
    torch.testing.assert_close(out.dist_ap, ap.to(out.dist_ap.dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out.dist_an, an.to(out.dist_an.dtype), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(out.p_inds, p)
    assert torch.equal(out.n_inds, n)
    assert torch.equal(out.valid, valid)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("name", list(LABELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_mining_matches_masked_reference(name, dtype, ties, exclude_self):
    labels = LABELS[name]
    d = rand_dist(len(labels), dtype=dtype, ties=ties)
    out = partdist.hard_example_mining(d, labels, exclude_self=exclude_self)
    assert out.dist_ap.dtype == dtype and out.p_inds.dtype == torch.int64 and out.valid.dtype == torch.bool
    assert_mining_equal(out, R.hard_example_mining_masked(d, labels, exclude_self=exclude_self))


def test_mining_known_values():
    # anchors 0,1 share id 0; 2 is alone; 3,4 share id 1.
    d = torch.tensor(
        [
            [0.0, 2.0, 1.0, 5.0, 1.0],
            [2.0, 0.0, 3.0, 0.5, 0.5],
            [1.0, 3.0, 0.0, 4.0, 2.0],
            [5.0, 0.5, 4.0, 0.0, 1.0],
            [1.0, 0.5, 2.0, 1.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 9, 1, 1])
    out = partdist.hard_example_mining(d, labels)
    assert out.dist_ap.tolist() == [2.0, 2.0, 0.0, 1.0, 1.0]
    assert out.p_inds.tolist() == [1, 0, 2, 4, 3]  # the singleton is its own positive
    assert out.dist_an.tolist() == [1.0, 0.5, 1.0, 0.5, 0.5]
    assert out.n_inds.tolist() == [2, 3, 0, 1, 1]  # ties: first column (row 0: 2 before 4)
    assert out.valid.all()
    ex = partdist.hard_example_mining(d, labels, exclude_self=True)
    assert ex.p_inds.tolist() == [1, 0, -1, 4, 3]
    assert ex.dist_ap[2].item() == 0.0
    assert ex.n_inds[2].item() == 0 and ex.dist_an[2].item() == 1.0  # the existing side is filled
    assert ex.valid.tolist() == [True, True, False, True, True]


def test_all_same_labels_have_no_negative():
    d = rand_dist(5)
    out = partdist.hard_example_mining(d, torch.zeros(5, dtype=torch.long))
    assert not out.valid.any()
    assert (out.n_inds == -1).all() and (out.dist_an == 0).all()
    assert torch.equal(out.p_inds, d.argmax(1))


@pytest.mark.parametrize("ties", [False, True])
def test_rectangular_with_labels_other(ties):
    labels = torch.tensor([0, 1, 2, 2, 5])
    other = torch.tensor([2, 2, 0, 7, 7, 1, 0, 3])
    d = rand_dist(5, 8, ties=ties, seed=3)
    out = partdist.hard_example_mining(d, labels, labels_other=other)
    ref = R.hard_example_mining_masked(d, labels, other)
    assert_mining_equal(out, ref)
    assert out.valid.tolist() == [True, True, True, True, False]  # id 5 has no positive column
    assert out.p_inds[4].item() == -1


def test_return_inds_false():
    labels = LABELS["unequal_k"]
    d = rand_dist(len(labels))
    full = partdist.hard_example_mining(d, labels)
    short = partdist.hard_example_mining(d, labels, False)
    assert len(short) == 3
    assert torch.equal(short.dist_ap, full.dist_ap) and torch.equal(short.valid, full.valid)


@pytest.mark.parametrize("labels_dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_integer_label_dtypes(labels_dtype):
    labels = LABELS["unequal_k"]
    d = rand_dist(len(labels))
    out = partdist.hard_example_mining(d, labels.to(labels_dtype))
    assert_mining_equal(out, R.hard_example_mining_masked(d, labels))


def test_non_contiguous_dist():
    labels = LABELS["unequal_k"]
    base = rand_dist(len(labels), seed=5)
    dt = base.t()  # column-major view
    assert not dt.is_contiguous()
    assert_mining_equal(partdist.hard_example_mining(dt, labels), R.hard_example_mining_masked(dt, labels))
    wide = rand_dist(len(labels), 2 * len(labels), seed=6)[:, ::2]
    other = torch.arange(len(labels)) % 4
    assert_mining_equal(
        partdist.hard_example_mining(wide, labels, labels_other=other),
        R.hard_example_mining_masked(wide, labels, other),
    )
    ex = torch.rand(1, len(labels), dtype=torch.float64).expand(len(labels), -1)  # stride 0
    assert_mining_equal(partdist.hard_example_mining(ex, labels), R.hard_example_mining_masked(ex, labels))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_cpu(dtype):
    labels = LABELS["unequal_k"]
    d = rand_dist(len(labels), dtype=dtype, seed=2)
    assert_mining_equal(partdist.hard_example_mining(d, labels), R.hard_example_mining_masked(d, labels))
    loss = partdist.triplet_hard_loss(d, labels)
    assert loss.dtype == dtype
    ref = R.triplet_hard_loss_masked(d.double(), labels)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-2, atol=1e-2)


def test_empty():
    d = torch.empty(0, 0)
    out = partdist.hard_example_mining(d, torch.empty(0, dtype=torch.long))
    assert all(t.shape == (0,) for t in out)
    loss = partdist.triplet_hard_loss(d.requires_grad_(), torch.empty(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    # rows without any column
    out = partdist.hard_example_mining(
        torch.empty(3, 0), torch.tensor([1, 2, 3]), labels_other=torch.empty(0, dtype=torch.long)
    )
    assert not out.valid.any() and (out.p_inds == -1).all() and (out.n_inds == -1).all()


# --------------------------------------------------------------------- NaN
def test_nan_propagates_to_selected_value():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    d = rand_dist(6, seed=1)
    d[0, 2] = NAN  # a positive of row 0
    d[1, 4] = NAN  # a negative of row 1
    d[2, 3] = NAN  # a negative of row 2 ...
    d[2, 5] = NAN  # ... and a second one: the first NaN is selected
    d[3, 0] = d[3, 1] = NAN  # negatives of row 3, positives untouched
    out = partdist.hard_example_mining(d, labels)
    assert_mining_equal(out, R.hard_example_mining_masked(d, labels))
    assert out.dist_ap[0].isnan() and out.p_inds[0].item() == 2
    assert out.dist_an[1].isnan() and out.n_inds[1].item() == 4
    assert out.n_inds[2].item() == 3
    assert not out.dist_ap[3].isnan() and out.n_inds[3].item() == 0
    # NaN only where the row does not look (a negative for the ap side): no effect
    assert not out.dist_ap[1].isnan()
    loss = partdist.triplet_hard_loss(d, labels)
    assert loss.isnan()


def test_nan_matches_torch_max_min_semantics():
    # the kernel's order is torch.max / torch.min along a dim on the candidates
    row = torch.tensor([[1.0, NAN, 3.0, NAN, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    other = torch.tensor([0, 0, 0, 0, 0])
    out = partdist.hard_example_mining(row, labels, labels_other=other)
    v, i = row.max(1)
    assert out.dist_ap.isnan().item() and v.isnan().item() and out.p_inds.item() == i.item() == 1


# --------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["equal_k", "unequal_k", "with_singletons", "all_same"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_gradient_reaches_selected_entries_only(name, ties, exclude_self):
    labels = LABELS[name]
    N = len(labels)
    base = rand_dist(N, ties=ties, seed=4)
    w1 = torch.randn(N, dtype=torch.float64)
    w2 = torch.randn(N, dtype=torch.float64)

    d = base.clone().requires_grad_()
    out = partdist.hard_example_mining(d, labels, exclude_self=exclude_self)
    ((w1 * out.dist_ap).sum() + (w2 * out.dist_an).sum()).backward()

    dr = base.clone().requires_grad_()
    ap, an, p, n, _ = R.hard_example_mining_masked(dr, labels, exclude_self=exclude_self)
    ((w1 * ap).sum() + (w2 * an).sum()).backward()
    torch.testing.assert_close(d.grad, dr.grad, rtol=0, atol=0)

    expected = torch.zeros_like(base)
    rows = torch.arange(N)
    has_p, has_n = out.p_inds >= 0, out.n_inds >= 0
    expected[rows[has_p], out.p_inds[has_p]] += w1[has_p]
    expected[rows[has_n], out.n_inds[has_n]] += w2[has_n]
    assert torch.equal(d.grad, expected)


def test_gradcheck_mining():
    labels = LABELS["unequal_k"]
    d = rand_dist(len(labels), seed=7).requires_grad_()
    assert gradcheck(lambda x: tuple(partdist.hard_example_mining(x, labels)[:2]), (d,))
    other = torch.tensor([0, 3, 3, 1, 1, 2, 0])
    d2 = rand_dist(len(labels), 7, seed=8).requires_grad_()
    assert gradcheck(lambda x: tuple(partdist.hard_example_mining(x, labels, labels_other=other)[:2]), (d2,))


@pytest.mark.parametrize("margin", [0.3, None, 2.0])
def test_gradcheck_triplet(margin):
    labels = LABELS["with_singletons"]
    d = rand_dist(len(labels), seed=9).requires_grad_()
    assert gradcheck(lambda x: partdist.triplet_hard_loss(x, labels, margin, exclude_self=True), (d,))
    # loss and the mined distances together
    assert gradcheck(
        lambda x: (lambda r: (r[0], r[1].dist_ap, r[1].dist_an))(
            partdist.triplet_hard_loss(x, labels, margin, return_mining=True)
        ),
        (d,),
    )


# ------------------------------------------------------------------- losses
@pytest.mark.parametrize("name", ["equal_k", "unequal_k", "with_singletons", "all_different"])
@pytest.mark.parametrize("margin", [0.3, 0.0, 1.5, None])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_triplet_hard_loss_matches_ranking_loss_composition(name, margin, exclude_self):
    labels = LABELS[name]
    base = rand_dist(len(labels), seed=11)
    d = base.clone().requires_grad_()
    loss = partdist.triplet_hard_loss(d, labels, margin, exclude_self=exclude_self)
    loss.backward()
    dr = base.clone().requires_grad_()
    ref = R.triplet_hard_loss_masked(dr, labels, margin, exclude_self=exclude_self)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(d.grad, dr.grad)


def test_triplet_hard_loss_hinge_point_has_zero_subgradient():
    # z + margin == 0 exactly: relu's subgradient 0 (torch.relu,
    # and nn.MarginRankingLoss from torch 2.14 on; torch 2.13's passed 1 there)
    d = torch.tensor([[0.0, 0.25, 0.5], [0.25, 0.0, 0.5], [0.5, 0.5, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    for margin in (0.25, 0.5):
        a = d.clone().requires_grad_()
        partdist.triplet_hard_loss(a, labels, margin).backward()
        b = d.clone().requires_grad_()
        ap, an, _, _, valid = R.hard_example_mining_masked(b, labels)
        torch.relu(ap - an + margin)[valid].mean().backward()
        assert torch.equal(a.grad, b.grad)
        assert torch.equal(a.grad[2], torch.zeros(3, dtype=d.dtype))  # anchor 2: at the hinge for both
        if margin == 0.25:  # all three anchors at the hinge point
            assert torch.equal(a.grad, torch.zeros_like(d))
    # just above the hinge the slope is 1 (per valid anchor, / number of valid anchors)
    a = d.clone().requires_grad_()
    partdist.triplet_hard_loss(a, labels, 0.25 + 1e-9).backward()
    assert a.grad[0, 1].item() == pytest.approx(1 / 3) and a.grad[0, 2].item() == pytest.approx(-1 / 3)


def test_triplet_hard_loss_rectangular_and_mining_output():
    labels = torch.tensor([0, 1, 2, 2, 5])
    other = torch.tensor([2, 2, 0, 7, 7, 1, 0, 3])
    base = rand_dist(5, 8, seed=12)
    d = base.clone().requires_grad_()
    loss, m = partdist.triplet_hard_loss(d, labels, 0.3, labels_other=other, return_mining=True)
    assert_mining_equal(m, R.hard_example_mining_masked(base, labels, other))
    loss.backward()
    dr = base.clone().requires_grad_()
    R.triplet_hard_loss_masked(dr, labels, 0.3, labels_other=other).backward()
    torch.testing.assert_close(loss, R.triplet_hard_loss_masked(base, labels, 0.3, labels_other=other))
    torch.testing.assert_close(d.grad, dr.grad)


@pytest.mark.parametrize("margin", [0.3, None])
def test_no_valid_anchor_gives_zero_with_grad(margin):
    d = rand_dist(5).requires_grad_()
    loss = partdist.triplet_hard_loss(d, torch.zeros(5, dtype=torch.long), margin)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(d.grad, torch.zeros_like(d))


def test_soft_margin_is_stable_for_large_differences():
    d = torch.tensor([[0.0, 200.0, 0.0], [200.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = partdist.triplet_hard_loss(d, labels, None)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(d.grad).all()


def test_loss_and_mined_distances_both_backpropagate():
    labels = LABELS["unequal_k"]
    base = rand_dist(len(labels), seed=13)
    d = base.clone().requires_grad_()
    loss, m = partdist.triplet_hard_loss(d, labels, 0.3, return_mining=True)
    (loss + 0.5 * m.dist_ap.sum() - 0.25 * m.dist_an.sum()).backward()
    dr = base.clone().requires_grad_()
    ap, an, _, _, valid = R.hard_example_mining_masked(dr, labels)
    (R.triplet_from_dists(ap[valid], an[valid], 0.3) + 0.5 * ap.sum() - 0.25 * an.sum()).backward()
    torch.testing.assert_close(d.grad, dr.grad)


# ------------------------------------------------------- property-based
@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(0, 9),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_property_matches_masked_reference(N, M, num_ids, ties, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_ids, (N,), generator=g)
    other = torch.randint(0, num_ids, (M,), generator=g)
    d = rand_dist(N, M, ties=ties, seed=seed)
    assert_mining_equal(
        partdist.hard_example_mining(d, labels, labels_other=other), R.hard_example_mining_masked(d, labels, other)
    )
    dsq = rand_dist(N, ties=ties, seed=seed + 1)
    for ex in (False, True):
        assert_mining_equal(
            partdist.hard_example_mining(dsq, labels, exclude_self=ex),
            R.hard_example_mining_masked(dsq, labels, exclude_self=ex),
        )


# --------------------------------------------------- opcheck and compile
@pytest.mark.slow
def test_opcheck_all_ops():
    labels = LABELS["unequal_k"]
    N = len(labels)
    other = torch.arange(7) % 3
    d = rand_dist(N, seed=14)
    dr = rand_dist(N, 7, seed=15)
    ops = torch.ops.partdist
    cases = [
        (ops.hard_example_mining, (d, labels, None, False)),
        (ops.hard_example_mining, (d.clone().requires_grad_(), labels, None, True)),
        (ops.hard_example_mining, (dr.clone().requires_grad_(), labels, other, False)),
        (ops.triplet_hard_loss, (d.clone().requires_grad_(), labels, None, 0.3, False)),
        (ops.triplet_hard_loss, (dr.clone().requires_grad_(), labels, other, None, False)),
        (ops.triplet_hard_loss, (d.float(), labels, None, 0.3, True)),
    ]
    m = partdist.hard_example_mining(d, labels)
    g = torch.randn(N, dtype=torch.float64)
    cases.append(
        (
            ops.hard_example_mining_backward,
            (torch.tensor(1.5, dtype=torch.float64), g, -g, m.dist_ap, m.dist_an, m.p_inds, m.n_inds, m.valid, 0.3, N),
        )
    )
    cases.append(
        (ops.hard_example_mining_backward, (None, g, None, m.dist_ap, m.dist_an, m.p_inds, m.n_inds, m.valid, None, N))
    )
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    labels = LABELS["unequal_k"]

    def fn(d, labels):
        loss = partdist.triplet_hard_loss(d, labels, 0.3)
        m = partdist.hard_example_mining(d, labels)
        return loss + m.dist_ap.mean() - m.dist_an.mean()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    base = rand_dist(len(labels), seed=16)
    d = base.clone().requires_grad_()
    out = compiled(d, labels)
    out.backward()
    dr = base.clone().requires_grad_()
    ref = fn(dr, labels)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(d.grad, dr.grad)


# ---------------------------------------------------------------- bad input
BAD = [
    # (kwargs builder, exception, message fragment)
    (lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.arange(3)), ValueError, "labels must have shape [4]"),
    (lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.rand(4)), TypeError, "labels must be an integer tensor"),
    (lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.ones(4, dtype=torch.bool)), TypeError, "integer tensor"),
    (lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.arange(4)[None]), ValueError, "labels must have shape [4]"),
    (lambda: dict(dist_mat=torch.rand(4, 5), labels=torch.arange(4)), ValueError, "must be square [N, N]"),
    (lambda: dict(dist_mat=torch.rand(4), labels=torch.arange(4)), ValueError, "dist_mat must be a 2-D tensor"),
    (lambda: dict(dist_mat=torch.ones(4, 4, dtype=torch.long), labels=torch.arange(4)), TypeError, "floating-point"),
    (lambda: dict(dist_mat=[[0.0]], labels=torch.arange(1)), TypeError, "dist_mat must be a torch.Tensor"),
    (
        lambda: dict(dist_mat=torch.rand(4, 5), labels=torch.arange(4), labels_other=torch.arange(4)),
        ValueError,
        "labels_other must have shape [5]",
    ),
    (
        lambda: dict(dist_mat=torch.rand(4, 5), labels=torch.arange(4), labels_other=torch.rand(5)),
        TypeError,
        "labels_other must be an integer tensor",
    ),
    (
        lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.arange(4), labels_other=torch.arange(4), exclude_self=True),
        ValueError,
        "exclude_self needs the square case",
    ),
    (
        lambda: dict(dist_mat=torch.rand(4, 4), labels=torch.arange(4, device="meta")),
        ValueError,
        "labels must be on the same device as dist_mat",
    ),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("fn", ["hard_example_mining", "triplet_hard_loss"])
def test_bad_input_messages(case, fn):
    make, exc, msg = BAD[case]
    with pytest.raises(exc) as e:
        getattr(partdist, fn)(**make())
    assert msg in str(e.value)
    assert f"partdist.{fn}" in str(e.value)


@pytest.mark.parametrize(
    "margin,exc,msg",
    [("0.3", TypeError, "margin must be a float or None"), (True, TypeError, "margin"), (NAN, ValueError, "finite")],
)
def test_bad_margin(margin, exc, msg):
    with pytest.raises(exc, match=msg):
        partdist.triplet_hard_loss(torch.rand(3, 3), torch.arange(3), margin)


def test_direct_op_call_checks_in_cpp():
    with pytest.raises(RuntimeError, match="labels must have shape"):
        torch.ops.partdist.hard_example_mining(torch.rand(4, 4), torch.arange(3))
    with pytest.raises(RuntimeError, match="must be square"):
        torch.ops.partdist.triplet_hard_loss(torch.rand(4, 5), torch.arange(4))
    with pytest.raises(RuntimeError, match="integer tensor"):
        torch.ops.partdist.hard_example_mining(torch.rand(4, 4), torch.rand(4))


# --------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,M", [(1, 1), (7, 7), (33, 65), (300, 1000)])
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_matches_cpu(dtype, N, M, ties):
    g = torch.Generator().manual_seed(N + M)
    labels = torch.randint(0, 5, (N,), generator=g)
    other = torch.randint(0, 5, (M,), generator=g)
    d = rand_dist(N, M, dtype=dtype, ties=ties, seed=N)
    if N > 5:
        d[3, 2] = NAN
    cpu = partdist.hard_example_mining(d, labels, labels_other=other)
    gpu = partdist.hard_example_mining(d.cuda(), labels.cuda(), labels_other=other.cuda())
    assert_mining_equal(type(cpu)(*(t.cpu() for t in gpu)), cpu)
    for margin in (0.3, None):
        a = d.clone().requires_grad_()
        la = partdist.triplet_hard_loss(a, labels, margin, labels_other=other)
        la.backward()
        b = d.cuda().requires_grad_()
        lb = partdist.triplet_hard_loss(b, labels.cuda(), margin, labels_other=other.cuda())
        lb.backward()
        torch.testing.assert_close(lb.cpu(), la, equal_nan=True)
        torch.testing.assert_close(b.grad.cpu(), a.grad, equal_nan=True)


@pytest.mark.cuda
def test_cuda_square_exclude_self_and_gradcheck():
    labels = LABELS["with_singletons"].cuda()
    d = rand_dist(len(labels), seed=17).cuda()
    for ex in (False, True):
        assert_mining_equal(
            partdist.hard_example_mining(d, labels, exclude_self=ex),
            R.hard_example_mining_masked(d, labels, exclude_self=ex),
        )
    x = d.clone().requires_grad_()
    assert gradcheck(lambda t: partdist.triplet_hard_loss(t, labels, 0.3), (x,))
