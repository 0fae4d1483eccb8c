"""torchreid's and fast-reid's own engines, end to end on a few synthetic images, with
partdist installed (``partdist.compat.{torchreid,fastreid}.install()``): training runs
through partdist's loss, evaluation through partdist's ranking and re-ranking, and the
evaluation numbers equal those of the engines' own functions on the same model.

Skipped where the package is not importable (torchreid / fast-reid need a torchvision
that loads beside the installed torch).
"""

import collections
import collections.abc
import sys
import types

import numpy as np
import pytest
import torch


def _import_or_skip(name):
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to load its operators
        pytest.skip(f"{name} is not importable here ({type(e).__name__}: {e})")


def _write_images(root, ids, per_id, cams, seed, prefix, looks=None):
    """PNG images, 64 x 32, whose colours depend on the identity's look (plus noise);
    ``looks``: identities share ``pid % looks`` looks (a ranking with mistakes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for pid in ids:
        base = np.random.default_rng(1000 + (pid if looks is None else pid % looks)).integers(0, 255, (4, 2, 3))
        for k in range(per_id):
            img = np.kron(base, np.ones((16, 16, 1))) + rng.normal(0, 20, (64, 32, 3))
            path = root / f"{prefix}{pid:03d}_{k}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
            out.append((str(path), pid, cams[k % len(cams)]))
    return out


def _dataset(tmp_path, train_ids=4, train_per_id=4):
    return {
        "train": _write_images(tmp_path / "train", range(train_ids), train_per_id, [0, 1], 0, "t"),
        "query": _write_images(tmp_path / "query", range(100, 106), 1, [0], 1, "q", looks=3),
        "gallery": _write_images(tmp_path / "gallery", range(100, 110), 3, [1, 2], 2, "g", looks=3),
    }


# ------------------------------------------------------------------- torchreid
@pytest.mark.slow  # a whole engine epoch
def test_torchreid_image_triplet_engine(tmp_path):
    torchreid = _import_or_skip("torchreid")
    from partdist.compat import torchreid as pdtr

    data = _dataset(tmp_path, train_ids=6)

    class PartdistSynthetic(torchreid.data.ImageDataset):
        def __init__(self, root="", **kwargs):
            super().__init__(data["train"], data["query"], data["gallery"], **kwargs)

    torchreid.data.register_image_dataset("partdist_synthetic", PartdistSynthetic)
    losses = pytest.importorskip("torchreid.reid.losses" if hasattr(torchreid, "reid") else "torchreid.losses")
    original_loss = losses.TripletLoss

    report = pdtr.install()
    try:
        assert report.ok, str(report)
        dm = torchreid.data.ImageDataManager(
            root=str(tmp_path), sources="partdist_synthetic", height=64, width=32, batch_size_train=12,
            batch_size_test=16, workers=0, num_instances=4, train_sampler="RandomIdentitySampler", use_gpu=False)
        torch.manual_seed(0)
        model = torchreid.models.build_model(name="resnet18", num_classes=dm.num_train_pids, loss="triplet",
                                             pretrained=False, use_gpu=False)
        optimizer = torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
        scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=20)
        engine = torchreid.engine.ImageTripletEngine(dm, model, optimizer=optimizer, margin=0.3, scheduler=scheduler,
                                                     use_gpu=False)
        assert isinstance(engine.criterion_t, pdtr.TripletLoss)  # the engine built partdist's loss
        engine.run(save_dir=str(tmp_path / "log"), max_epoch=1, print_freq=1)  # one epoch, then test()
        loaders = engine.test_loader["partdist_synthetic"]

        def evaluate(rerank):
            return engine._evaluate(dataset_name="partdist_synthetic", query_loader=loaders["query"],
                                    gallery_loader=loaders["gallery"], dist_metric="euclidean",
                                    normalize_feature=False, visrank=False, visrank_topk=10, save_dir="",
                                    use_metric_cuhk03=False, ranks=[1], rerank=rerank)

        ours = [evaluate(False), evaluate(True)]
    finally:
        pdtr.uninstall()
    theirs = [evaluate(False), evaluate(True)]  # torchreid's own evaluate_rank / re_ranking, same model
    assert 0 < theirs[0][1] < 100  # identities that look alike: a ranking with mistakes, so equality means something
    for (r1, m1), (r2, m2) in zip(ours, theirs):
        assert r1 == pytest.approx(r2, abs=1e-6)
        assert m1 == pytest.approx(m2, abs=1e-6)
    # the training loss: partdist's and torchreid's on one batch of this model's features
    model.eval()
    batch = next(iter(dm.train_loader))
    imgs, pids = (batch["img"], batch["pid"]) if isinstance(batch, dict) else (batch[0], batch[1])
    with torch.no_grad():
        feats = model(imgs)
    feats = feats[1] if isinstance(feats, tuple) else feats
    torch.testing.assert_close(pdtr.TripletLoss(0.3)(feats, pids), original_loss(0.3)(feats, pids),
                               rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- fast-reid
@pytest.mark.slow  # a whole trainer run
def test_fastreid_default_trainer(tmp_path, monkeypatch):
    # fast-reid 1.4 imports collections.Mapping, removed in Python 3.10 (a user on 3.10+
    # applies the same fix; install() reports the failure otherwise)
    if not hasattr(collections, "Mapping"):
        monkeypatch.setattr(collections, "Mapping", collections.abc.Mapping, raising=False)
    # ... and torch._six (removed in torch 2.0; fast-reid 1.4 pins torch 1.13): the same
    # stand-in a user of a newer torch needs
    if "fastreid" not in sys.modules:
        try:
            __import__("torch._six")
        except ImportError:
            six = types.ModuleType("torch._six")
            six.string_classes = (str,)
            monkeypatch.setitem(sys.modules, "torch._six", six)
    _import_or_skip("fastreid.engine")
    import fastreid.data.build as fr_build
    import fastreid.evaluation.reid_evaluation as fr_eval
    import fastreid.modeling.meta_arch.baseline as fr_baseline
    import fastreid.utils.compute_dist as fr_dist
    from fastreid.config import get_cfg
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.data.datasets.bases import ImageDataset
    from fastreid.engine import DefaultTrainer

    from partdist.compat import fastreid as pdfr
    from partdist.reference import originals as O

    data = _dataset(tmp_path)  # 4 identities x 4 images: one batch of 16, one iteration

    class PartdistSynthetic(ImageDataset):
        dataset_name = "pdsyn"

        def __init__(self, root="datasets", **kwargs):
            train = [(p, f"pdsyn_{pid}", f"pdsyn_{cam}") for p, pid, cam in data["train"]]
            super().__init__(lambda: train, lambda: data["query"], lambda: data["gallery"], **kwargs)

    if "PartdistSynthetic" in DATASET_REGISTRY._obj_map:
        DATASET_REGISTRY._obj_map.pop("PartdistSynthetic")
    DATASET_REGISTRY.register(PartdistSynthetic)

    if not torch.cuda.is_available():
        # fast-reid's DataLoaderX prefetches on a CUDA stream; torch's DataLoader stands in
        class CPULoader(torch.utils.data.DataLoader):
            def __init__(self, local_rank, **kwargs):
                kwargs["pin_memory"] = False
                super().__init__(**kwargs)

        monkeypatch.setattr(fr_build, "DataLoaderX", CPULoader)
        # fast-reid's own Jaccard distance runs a faiss GPU search; the transcription of its
        # semantics (brute-force search) stands in for the comparison below
        monkeypatch.setattr(fr_dist, "compute_jaccard_distance",
                            lambda features, k1=20, k2=6, search_option=0, fp16=False:
                            O.fastreid_compute_jaccard_distance(features, k1, k2))
    # the evaluator compiles fast-reid's Cython ranking at construction (and exits if that
    # fails); the Python fallback is fast-reid's own evaluation
    monkeypatch.setattr(fr_eval.ReidEvaluator, "_compile_dependencies", lambda self: None)

    class Trainer(DefaultTrainer):
        def build_writers(self):
            # fast-reid's metric printer divides by the iterations since its last write,
            # 0 when one iteration is followed by the end of the epoch
            return []

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM = 512
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.MODEL.LOSSES.TRI.HARD_MINING = True
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.SIZE_TEST = [64, 32]
    cfg.DATASETS.NAMES = ("PartdistSynthetic",)
    cfg.DATASETS.TESTS = ("PartdistSynthetic",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.NUM_INSTANCE = 4
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.MAX_EPOCH = 1
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.AMP.ENABLED = False
    cfg.TEST.IMS_PER_BATCH = 16
    cfg.TEST.EVAL_PERIOD = 1
    cfg.TEST.METRIC = "cosine"
    cfg.TEST.RERANK.ENABLED = True
    cfg.TEST.RERANK.K1 = 6
    cfg.TEST.RERANK.K2 = 3
    cfg.TEST.ROC.ENABLED = True
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    (tmp_path / "out").mkdir()

    report = pdfr.install()
    try:
        assert report.failed == {}, str(report)
        assert fr_baseline.triplet_loss is pdfr.triplet_loss
        assert fr_eval.build_dist is pdfr.build_dist
        torch.manual_seed(0)
        trainer = Trainer(cfg)
        assert trainer.iters_per_epoch == 1
        trainer.train()  # one iteration, then the evaluation hook
        ours = DefaultTrainer.test(cfg, trainer.model)
    finally:
        pdfr.uninstall()
    theirs = DefaultTrainer.test(cfg, trainer.model)  # fast-reid's own functions, same model
    ours, theirs = ours.get("PartdistSynthetic", ours), theirs.get("PartdistSynthetic", theirs)
    assert set(ours) == set(theirs) and "mAP" in ours
    assert 0 < theirs["mAP"] < 100  # identities that look alike: a ranking with mistakes
    for k in theirs:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-4), k
