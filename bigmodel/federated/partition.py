"""Split one labelled file into per-client files, for experiments that simulate data owners.

`iid`: a shuffle cut into equal parts. `label-skew`: for each label, the share each client gets
is drawn from a Dirichlet(α) distribution (Hsu et al., 2019), so a small α gives each client
mostly a few labels, and a large α approaches iid.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bigmodel.data.labelled import Example
from bigmodel.errors import BigModelError


def partition(examples: list[Example], clients: int, how: str, alpha: float, seed: int) -> list[list[Example]]:
    """`examples` dealt to `clients` parts, as `how` says; every part gets at least one example."""
    if clients < 1 or clients > len(examples):
        raise BigModelError(f"--clients {clients}: need between 1 and the {len(examples)} training examples")
    rng = np.random.default_rng(seed)
    if how == "iid":
        return [[examples[i] for i in part] for part in np.array_split(rng.permutation(len(examples)), clients)]
    if how != "label-skew":
        raise BigModelError(f"--partition must be iid or label-skew, not {how!r}")
    if alpha <= 0:
        raise BigModelError(f"--alpha must be positive, not {alpha}")
    parts: list[list[Example]] = [[] for _ in range(clients)]
    for label in sorted({e.label for e in examples}):
        members = rng.permutation([i for i, e in enumerate(examples) if e.label == label])
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.extend(examples[i] for i in chunk)
    if any(not part for part in parts):
        raise BigModelError(f"--alpha {alpha} left a client without examples; use a larger --alpha or fewer clients")
    return [[part[i] for i in rng.permutation(len(part))] for part in parts]


def write_partitions(parts: list[list[Example]], folder: Path, text_column: str, label_column: str) -> list[Path]:
    """One TSV per client, with the source's column names."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = folder / f"client-{i}.tsv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            writer.writerow([text_column, label_column])
            writer.writerows([e.text, e.label] for e in part)
        paths.append(path)
    return paths
