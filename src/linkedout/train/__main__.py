"""``python -m linkedout.train ARGS`` = ``linkedout train ARGS``: the module torchrun starts per worker.

    torchrun --nproc_per_node 2 -m linkedout.train --dataset ml-100k --model sasrec --run-dir runs/x

Each worker reads its rank from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) and joins
the group (linkedout.train.distributed); rank 0 prints the table and writes the run directory.
"""

from __future__ import annotations

import sys

from linkedout.cli import app


def main() -> None:
    app(["train", *sys.argv[1:]], prog_name="python -m linkedout.train")


if __name__ == "__main__":
    main()
