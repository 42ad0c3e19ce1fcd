"""One torchrun process of bench/fsdp_memory.py: a few pretraining steps, then this process's peak
resident memory as one JSON line on stdout."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from bigmodel.cli import build_parser
from bigmodel.recipes.train import pretrain_configs
from bigmodel.train.trainer import pretrain

args = build_parser().parse_args(["pretrain", *sys.argv[1:]])
start = time.perf_counter()
pretrain(*pretrain_configs(args))
print(json.dumps({"rank": int(os.environ["RANK"]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  / 1024, "seconds": time.perf_counter() - start}), flush=True)
