"""What a person watches during training: a progress bar, metrics.csv, loss.png, TensorBoard,
and, with `--track mlflow`, an MLflow run (`mlflow_run.py`).

Pretraining, fine-tuning and federated rounds all log through `Tracker`: one row per evaluation,
whose first field (`iter`, `step` or `round`) is the x-axis of the plot and of TensorBoard. Other
listeners (MLflow, a sweep's pruner) are `Sink`s: they see each evaluation row and the run's end.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

METRIC_FIELDS = ["iter", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def plot_losses(rows: list[dict[str, float]], out: Path, title: str, x: str = "iter") -> None:
    """Train and val loss against the iteration (or step), as a PNG a person can glance at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        draw(ax, rows, title, x)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


def draw(ax: Any, rows: list[dict[str, float]], title: str, x: str) -> None:
    xs = [r[x] for r in rows]
    ax.plot(xs, [r["train_loss"] for r in rows], marker="o", ms=3, label="train")
    ax.plot(xs, [r["val_loss"] for r in rows], marker="o", ms=3, label="val")
    best = min(rows, key=lambda r: r["val_loss"])
    ax.annotate(f"lowest val {best['val_loss']:.3f}", (best[x], best["val_loss"]),
                textcoords="offset points", xytext=(-60, 18), arrowprops=dict(arrowstyle="->"))
    ax.set(xlabel=x, ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()


def shown(name: str, value: float) -> str:
    """One figure of an evaluation line, in the form a person reads fastest."""
    if name == "lr":
        return f"lr {value:.2e}"
    if name.endswith("_per_s"):
        unit = name.removesuffix("_per_s").replace("tokens", "tok").replace("examples", "ex")
        return f"{value / 1000:.1f}k {unit}/s" if value >= 1000 else f"{value:.1f} {unit}/s"
    if name == "elapsed_s":
        return f"{value:.1f}s"
    if name in ("clients", "examples"):
        return f"{name} {int(value)}"
    if name == "train_loss" or name == "val_loss":
        return f"{name.removesuffix('_loss')} {value:.4f}"
    return f"{name} {value:.4f}"


class Sink(Protocol):
    def evaluation(self, row: dict[str, float]) -> None: ...

    def close(self, error: BaseException | None) -> None: ...


def tracking_sinks(cfg: Any, run_dir: Path, sections: dict[str, Any], x: str, enabled: bool) -> list[Sink]:
    """The sinks a run's `--track` asks for (on the main process only)."""
    if not enabled or cfg.track == "none":
        return []
    from bigmodel.train.mlflow_run import MlflowRun

    run_dir.mkdir(parents=True, exist_ok=True)
    return [MlflowRun(run_dir, sections, cfg.tracking_uri, x)]


class Tracker:
    """Only the main process tracks; the others get a silent one. Use it as a context manager: its
    end tells the sinks whether the run finished or why not."""

    def __init__(self, run_dir: Path, total: int, start: int, enabled: bool, tensorboard: bool,
                 fields: list[str] = METRIC_FIELDS, desc: str = "train", keep_before: int | None = None,
                 sinks: list[Sink] | None = None) -> None:
        """`start` is where a resumed run's bar begins; rows from `keep_before` on (default: `start`), which
        the run is about to log again, are dropped from metrics.csv."""
        self.enabled = enabled
        self.sinks = sinks or []
        self.fields = fields
        self.x = fields[0]
        self.rate_field = next(f for f in fields if f.endswith("_per_s"))
        self.csv_path = run_dir / "metrics.csv"
        self.png_path = run_dir / "loss.png"
        self.title = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name
        self.bar = tqdm(total=total, initial=start, desc=desc, unit=self.x, disable=not enabled,
                        dynamic_ncols=True, mininterval=0.5)
        self.writer = None
        if enabled:
            keep_before = start if keep_before is None else keep_before
            rows = [r for r in read_metrics(self.csv_path) if r[self.x] < keep_before]
            self._write_rows(rows)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def _write_rows(self, rows: list[dict[str, float]]) -> None:
        with self.csv_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (int(v) if k == self.x else v) for k, v in row.items()})

    def step(self, loss: float, lr: float, rate: float) -> None:
        self.bar.update(1)
        if self.enabled and self.bar.n % 10 == 0:
            self.bar.set_postfix_str(f"loss {loss:.4f} {shown('lr', lr)} {shown(self.rate_field, rate)}",
                                     refresh=False)

    def evaluation(self, row: dict[str, float]) -> None:
        if self.enabled:
            self._record(row)
        for sink in self.sinks:  # last: a sweep's pruner may stop the run here
            sink.evaluation(row)

    def say(self, text: str) -> None:
        """A line for the person watching, printed above the progress bar."""
        self.bar.write(text)

    def _record(self, row: dict[str, float]) -> None:
        figures = " | ".join(shown(k, row[k]) for k in self.fields[1:] if k in row)
        self.bar.write(f"{self.x} {int(row[self.x]):>6} | {figures}")
        with self.csv_path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow({k: row[k] for k in self.fields if k in row})
        if self.writer is not None:
            for key in self.fields[1:]:
                if key in row:
                    self.writer.add_scalar(key, row[key], int(row[self.x]))
            self.writer.flush()

    def close(self, error: BaseException | None = None) -> None:
        """Close the bar, TensorBoard's writer and every sink (MLflow's run) whatever else fails; the plot is
        drawn first, and a plot that cannot be drawn is said in one line (metrics.csv holds the figures)."""
        self.bar.close()
        try:
            if self.enabled and (rows := read_metrics(self.csv_path)):
                plot_losses(rows, self.png_path, self.title, self.x)
        except Exception as e:  # a plotting library's failure costs the picture, not the run's handles
            print(f"warning: could not draw {self.png_path} ({type(e).__name__}: {e}); the figures are in "
                  f"{self.csv_path}", file=sys.stderr)
        finally:
            if self.writer is not None:
                self.writer.close()
            for sink in self.sinks:
                sink.close(error)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: Any) -> None:
        self.close(error)
