"""Training of the reference ReID models (:data:`partdist.models.MODEL_SPECS`) with the partdist losses.

Embedding models train with the ID loss (one per classifier, averaged) + the batch-hard triplet
loss on ``global`` (+ DMLI for AlignedReID, + the model's ``extra_losses``); pair models
(IDLA, PersonNet, Gate Siamese) with their pair losses on the pairs of each P x K batch
(:mod:`partdist.models.pairs`); part models get ``(images, pids, parts)`` batches.

Checkpoints are written atomically at the end of every epoch (model, optimizer, scheduler,
RNG states, epoch, metrics; plain data and tensors only, read back with
``torch.load(weights_only=True)`` by :func:`partdist.runs.load_checkpoint`); ``resume=True`` continues from the last one exactly: every epoch
re-seeds its sampler, augmentations and dropout from ``(seed, epoch)``, so training 2 epochs
equals training 1, stopping, resuming and training 1 more. A kill or Ctrl-C mid-epoch loses at
most the current epoch. Metrics go to ``<out>/metrics.jsonl``, one JSON object per epoch.

Distributed data parallel (``torchrun``): when a ``torch.distributed`` process group is
initialized (``partdist train`` does it under ``torchrun`` or with ``--distributed``), the
:class:`Trainer` wraps the model in ``DistributedDataParallel``. The global batch is the
single-process P x K batch; rank ``r`` of ``W`` takes the ``P / W`` identities at positions
``r * P / W ...`` of it (whole identities, ``P`` must be divisible by ``W``) and loads only those
images. The triplet losses mine over the global batch (``all_ranks=True``, their loss is
multiplied by ``W`` to undo DDP's gradient averaging) and the ID loss is a mean over equal shards,
so a step equals the single-process step on the same global batch (up to float summation order;
exactly so only where BatchNorm does not use per-rank batch statistics: ``freeze_bn``, or
``sync_bn`` on CUDA). Only rank 0 writes checkpoints, metrics, logs and progress bars; every rank
resumes from the same checkpoint, and since the global batches are a function of
``(seed, epoch)`` a run may be resumed with another number of ranks.

Mixed precision and compilation (``cfg.amp``, ``cfg.compile``; ``partdist train --amp``,
``--compile``): the forward and the losses run under ``torch.autocast`` (bfloat16, or float16
with a ``GradScaler`` whose state is checkpointed) and/or through ``torch.compile`` (default
backend); the weights and the optimizer stay float32. Both are saved in the run's configuration,
and ``partdist train --resume`` keeps the run's values unless the flags are given. A CUDA
device ``cuda:N`` is made the current device (:func:`partdist.train.trainer.select_device`).

The run's configuration and its checkpoint files live in :mod:`partdist.runs`; this package
holds the :class:`Trainer` (:mod:`.trainer`), the P x K batches (:mod:`.batches`), the
progress display (:mod:`.progress`) and a pair model's step on batches of pairs (:mod:`.pairs`).
"""

from ..runs import TrainConfig, build_model
from .batches import make_batches
from .pairs import verification_step
from .trainer import Trainer, train

__all__ = ["TrainConfig", "build_model", "Trainer", "train", "make_batches", "verification_step"]
