"""The model's fp32 linear layer on the CPU (`bigmodel.model.decoding.Linear`) against PyTorch's own
`nn.Linear`, outside autograd, at the shapes inference runs: one row (a decoding step), a few (a serving
batch), a prompt and a Whisper audio window (1,500 rows), for the layers of whisper-tiny.en (384 wide),
whisper-base (512) and SmolLM2-135M (576), their output layers included.

Each time is the median of repeated calls on the same weights, ours under the thread policy the decoders set
around a step (`decoding_threads`: one row leaves the cores to OpenBLAS); the results must agree within 1e-4. Last
line `ratio: X.XX`: the geometric mean over all shapes of nn.Linear's time over ours.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
from _common import median_seconds, save

from bigmodel.model.decoding import Linear, decoding_threads

SHAPES = [(384, 1152), (384, 1536), (1536, 384), (384, 51864), (512, 2048), (2048, 512), (576, 1536), (1536, 576),
          (576, 49152)]  # (in, out)
ROWS = [1, 4, 16, 128, 1500]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out, ratios = [], []
    print(f"{'in':>5} {'out':>6} {'rows':>5} {'nn.Linear ms':>13} {'ours ms':>9} {'speed-up':>8}")
    with torch.no_grad():
        for fan_in, fan_out in SHAPES:
            theirs = nn.Linear(fan_in, fan_out)
            ours = Linear(fan_in, fan_out)
            ours.load_state_dict(theirs.state_dict())
            for rows in ROWS:
                if rows * fan_out > 20_000_000:  # a 1,500-row output layer: not a shape inference runs
                    continue
                x = torch.randn(rows, fan_in)
                assert torch.allclose(ours(x), theirs(x), atol=1e-4)
                repeats = args.repeats if rows * fan_in * fan_out < 1e8 else 5
                base = median_seconds(lambda m=theirs, x=x: m(x), repeats)
                with decoding_threads(True, rows):
                    fast = median_seconds(lambda m=ours, x=x: m(x), repeats)
                ratios.append(base / fast)
                rows_out.append({"in": fan_in, "out": fan_out, "rows": rows, "nn_linear_ms": round(1e3 * base, 3),
                                 "ours_ms": round(1e3 * fast, 3), "speedup": round(base / fast, 2)})
                print(f"{fan_in:>5} {fan_out:>6} {rows:>5} {1e3 * base:>13.3f} {1e3 * fast:>9.3f} {base / fast:>7.2f}x",
                      flush=True)
    ratio = math.exp(sum(map(math.log, ratios)) / len(ratios))
    path = save("linear", {"threads": args.threads, "shapes": rows_out, "ratio": ratio})
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
