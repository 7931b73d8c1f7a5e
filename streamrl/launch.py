"""`python -m streamrl.launch …`: torchrun (torch.distributed.run, same arguments) for the learner's
ranks, with one difference an init system needs: a SIGTERM/SIGINT that torchrun forwards to the
ranks (which drain: finish the step, checkpoint, commit) ends in exit 0, where torchrun itself
re-raises the signal as an error after its workers have stopped. `streamrl run` starts the learner
this way when `learn.world_size > 1`; plain `torchrun` works the same apart from that exit code."""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun


def main() -> None:
    try:
        torchrun()
    except SignalException as exc:
        if exc.sigval in (signal.SIGTERM, signal.SIGINT):
            print(f"streamrl.launch: ranks stopped on {exc.sigval.name}", file=sys.stderr)
            sys.exit(0)
        raise


if __name__ == "__main__":
    main()
