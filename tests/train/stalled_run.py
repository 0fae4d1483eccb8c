"""``python stalled_run.py E:I ARGS``: ``partdist ARGS`` that, after iteration I (1-based) of
epoch E (1-based), announces on stderr that it stalled and sleeps until it is signalled: a
deterministic "mid-epoch" for the interruption tests (test_train_interrupt.py). The stall is
patched onto the trainer's per-iteration progress update, which follows the optimizer step."""

import sys
import time

from partdist.train import progress


def main():
    epoch, iteration = (int(v) for v in sys.argv[1].split(":"))
    update = progress.Progress.update

    def stalling_update(self, loss):
        update(self, loss)
        if self.desc.startswith(f"epoch {epoch}/") and self.n == iteration:
            print(f"stalled in epoch {epoch} after iteration {iteration}", file=sys.stderr, flush=True)
            while True:
                time.sleep(0.05)

    progress.Progress.update = stalling_update
    from partdist.cli import main as partdist_main

    return partdist_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
