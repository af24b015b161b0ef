"""`tui-trainer train` as one rank of an mlx.launch job, each rank with its own config file
(tests/test_distributed.py starts it to give two ranks different configs)::

    mlx.launch -n 2 --backend ring --python PYTHON tests/distributed_run.py RANK0.yaml RANK1.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_trainer's rules judge

if __name__ == "__main__":
    from tui_trainer.cli import main

    config = sys.argv[1 + int(os.environ.get("MLX_RANK", "0"))]
    sys.exit(main(["train", "--headless", "--config", config]))
