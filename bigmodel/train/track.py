"""What a person watches during training: a progress bar, metrics.csv, loss.png, TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

METRIC_FIELDS = ["iter", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_losses(rows: list[dict[str, float]], out: Path, title: str) -> None:
    """Train and val loss against iteration, as a PNG a person can glance at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    iters = [r["iter"] for r in rows]
    ax.plot(iters, [r["train_loss"] for r in rows], marker="o", ms=3, label="train")
    ax.plot(iters, [r["val_loss"] for r in rows], marker="o", ms=3, label="val")
    best = min(rows, key=lambda r: r["val_loss"])
    ax.annotate(f"best val {best['val_loss']:.3f}", (best["iter"], best["val_loss"]),
                textcoords="offset points", xytext=(-60, 18), arrowprops=dict(arrowstyle="->"))
    ax.set(xlabel="iteration", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


class Tracker:
    """Only the main process tracks; the others get a silent one."""

    def __init__(self, run_dir: Path, total_iters: int, start_iter: int, enabled: bool,
                 tensorboard: bool, fields: list[str] = METRIC_FIELDS) -> None:
        self.enabled = enabled
        self.fields = fields
        self.csv_path = run_dir / "metrics.csv"
        self.png_path = run_dir / "loss.png"
        self.title = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name
        self.bar = tqdm(total=total_iters, initial=start_iter, desc="train", unit="it",
                        disable=not enabled, dynamic_ncols=True, mininterval=0.5)
        self.writer = None
        if enabled:
            # A resumed run drops rows from iterations it is about to repeat.
            rows = [r for r in read_metrics(self.csv_path) if r["iter"] < start_iter]
            self._write_rows(rows)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def _write_rows(self, rows: list[dict[str, float]]) -> None:
        with self.csv_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (int(v) if k == "iter" else v) for k, v in row.items()})

    def step(self, loss: float, lr: float, tokens_per_s: float) -> None:
        self.bar.update(1)
        if self.enabled and self.bar.n % 10 == 0:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {tokens_per_s / 1000:.1f}k tok/s",
                                     refresh=False)

    def evaluation(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        extra = f" | masked acc {row['val_mask_acc']:.3f}" if "val_mask_acc" in row else ""
        self.bar.write(f"iter {int(row['iter']):>6} | train {row['train_loss']:.4f} | "
                       f"val {row['val_loss']:.4f}{extra} | lr {row['lr']:.2e} | "
                       f"{row['tokens_per_s'] / 1000:.1f}k tok/s | {row['elapsed_s']:.1f}s")
        with self.csv_path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(row)
        if self.writer is not None:
            for key in self.fields[1:]:
                self.writer.add_scalar(key, row[key], int(row["iter"]))
            self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            rows = read_metrics(self.csv_path)
            if rows:
                plot_losses(rows, self.png_path, self.title)
        if self.writer is not None:
            self.writer.close()
