"""`bigmodel federated`: Flower's own processes, started and stopped for one run.

Locally (no `--superlink`), a SuperLink and one SuperNode per client start as separate processes
on loopback, each SuperNode given its client's data file; then `flwr run` submits the app (a
folder with a `pyproject.toml` naming `bigmodel.federated.apps`) and streams its log until the
last round. With `--superlink HOST:PORT`, only the submission happens: the SuperLink and the
data owners' SuperNodes were started on their own machines (see docs/guides/federated.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bigmodel.config import FederatedConfig, FinetuneConfig, yaml_text
from bigmodel.data.labelled import read_labelled
from bigmodel.errors import BigModelError
from bigmodel.federated.partition import partition, write_partitions
from bigmodel.federated.rounds import RECIPE
from bigmodel.model.checkpoint import locate

SUBMIT_MARGIN = 600.0  # seconds `flwr run` may take beyond its rounds' timeouts (start-up, the last save)
APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "bigmodel-federated"
version = "1.0.0"
description = "bigmodel fine-tuning over Flower"
license = "MIT"

[tool.flwr.app]
publisher = "bigmodel"

[tool.flwr.app.components]
serverapp = "bigmodel.federated.apps:server"
clientapp = "bigmodel.federated.apps:client"

[tool.flwr.app.config]
recipe = "{recipe}"
"""


def free_port() -> int:
    """A loopback port reserved for a server about to start: bound, connected to once and closed, it waits in
    TIME_WAIT, so for a minute the kernel hands it to no other program asking for any free port, while a
    server binding it with SO_REUSEADDR (gRPC and uvicorn do, so Flower's processes do) still can. Closing
    a plain bound socket instead frees it for the next comer at once."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            accepted.close()  # the accepting side closes first: the TIME_WAIT is on this port
    return port


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group `proc` leads (its own and its children); one that has already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Until something listens on `port`; a process that died first is reported with its last log line."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise BigModelError(f"{Path(proc.args[0]).name} exited at start: {lines[-1]} (log: {log})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise BigModelError(f"{Path(proc.args[0]).name} did not listen on port {port} within {seconds:.0f} s (log: {log})")


def flower(command: str) -> str:
    """The path of one of Flower's executables, from the environment bigmodel runs in."""
    path = shutil.which(command, path=str(Path(sys.executable).parent)) or shutil.which(command)
    if path is None:
        raise BigModelError(f"{command} not found: pip install 'bigmodel[federated]'")
    return path


def client_files(fed: FederatedConfig, local: FinetuneConfig, out: Path) -> list[Path]:
    """Each client's data file: the given ones, or partitions of `--train` written under `out`."""
    if fed.client_files:
        return [Path(f).resolve() for f in fed.client_files]
    if not fed.train:
        raise BigModelError("federated needs --train FILE (partitioned into --clients parts) or --client-files")
    rows = read_labelled(fed.train, local.text_column, local.label_column)
    rows = rows[:local.max_train] if local.max_train else rows
    parts = partition(rows, fed.clients, fed.partition, fed.alpha, fed.seed)
    return [p.resolve() for p in write_partitions(parts, out / "partitions", local.text_column, local.label_column)]


def write_app(fed: FederatedConfig, local: FinetuneConfig, out: Path) -> Path:
    """The Flower app folder and the recipe its ServerApp reads."""
    app = out / "flower-app"
    app.mkdir(parents=True, exist_ok=True)
    recipe = (out / RECIPE).resolve()
    recipe.write_text(yaml_text({"federated": fed, "finetune": local}), encoding="utf-8")
    (app / "pyproject.toml").write_text(APP_TOML.format(recipe=recipe.as_posix()), encoding="utf-8")
    (app / "README.md").write_text("Generated by `bigmodel federated`; see bigmodel/federated/apps.py.\n")
    return app


def connection(flwr_home: Path, address: str, insecure: bool, root_certificates: str) -> None:
    """Flower's CLI configuration naming the SuperLink to submit to."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", 'default = "bigmodel"', "", "[superlink.bigmodel]", f'address = "{address}"']
    lines += ["insecure = true"] if insecure else [f'root-certificates = "{Path(root_certificates).resolve()}"'] \
        if root_certificates else []
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclasses.dataclass
class LocalFederation:
    """A SuperLink and SuperNodes on loopback, as separate processes, logging under `folder`."""

    folder: Path
    clients: list[Path]
    port_base: int = 0  # the SuperLink's port, and the SuperNodes' after it (0: free ports)
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    control: str = ""

    def port(self, i: int) -> int:
        """Port of process `i` (0: the SuperLink, 1...: the SuperNodes)."""
        return self.port_base + i if self.port_base else free_port()

    def start(self) -> None:
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        port = self.port(0)  # one HTTP port serves the control, fleet and runtime APIs
        self.control = f"127.0.0.1:{port}"
        self._spawn(logs / "superlink.log", flower("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                    "--port", str(port), "--database", str(self.folder / "superlink.db"))
        wait_for_port(port, self.processes[0], logs / "superlink.log")
        for i, data in enumerate(self.clients):
            self._spawn(logs / f"supernode-{i}.log", flower("flower-supernode"), "--insecure",
                        "--superlink", self.control, "--host", "127.0.0.1", "--port", str(self.port(1 + i)),
                        "--node-config", f'data="{data.as_posix()}" client={i}')

    def _spawn(self, log: Path, *command: str) -> None:
        """Start one of Flower's processes; simulated data owners share this machine's cores evenly."""
        threads = str(max(1, (os.cpu_count() or 1) // len(self.clients)))
        env = {"OMP_NUM_THREADS": threads, **os.environ}
        with log.open("w") as fh:
            self.processes.append(subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT,
                                                   start_new_session=True, env=env))

    def stop(self) -> None:
        """End every process of the federation, and the apps they started (each leads a process group):
        SIGTERM, 20 s to finish, then SIGKILL for whatever is left. Every group is signalled, also where its
        leader has exited: the apps it started may still be running."""
        for proc in self.processes:
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.processes:
            signal_group(proc, signal.SIGKILL)
            proc.wait()

    def failed(self) -> str | None:
        """Why the run cannot go on: the SuperLink has exited (a SuperNode may go: the round closes without it)."""
        superlink = self.processes[0] if self.processes else None
        if superlink is not None and superlink.poll() is not None:
            return f"the SuperLink exited with status {superlink.returncode} (log: {self.folder / 'logs'})"
        return None


def run_federated(fed: FederatedConfig, local: FinetuneConfig) -> Path:
    """Run every round; the run folder (metrics.csv, clients.csv, loss.png, best/, last/)."""
    if not fed.val:
        raise BigModelError("federated needs --val FILE: the server evaluates the global model on it every round")
    if not local.init:
        raise BigModelError("federated needs --init CKPT_OR_HF_DIR: the model the clients start from")
    if local.dp_epsilon is not None:
        raise BigModelError("--dp-epsilon is not supported by federated yet: each round's ε would have to be "
                            "composed over the rounds, which the clients' accountants do not do")
    read_labelled(fed.val, local.text_column, local.label_column)  # bad input fails here, not inside Flower
    locate(local.init)
    out = Path(fed.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fed = dataclasses.replace(fed, out=str(out), val=str(Path(fed.val).resolve()))
    federation = None
    if not fed.superlink:  # a local federation: the data owners are simulated here, one SuperNode each
        files = client_files(fed, local, out)
        fed = dataclasses.replace(fed, clients=len(files))
        federation = LocalFederation(out / "flower", files, fed.port_base)
    app = write_app(fed, local, out)
    env = {**os.environ, "FLWR_HOME": str(out / "flower" / "home")}
    with exit_on_sigterm():
        run_rounds(fed, app, env, federation, out)
    return out


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """A SIGTERM to `bigmodel federated` unwinds it like Ctrl-C, so the federation it started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(sig: int, _: object) -> None:
        raise SystemExit(128 + sig)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_rounds(fed: FederatedConfig, app: Path, env: dict[str, str], federation: LocalFederation | None,
               out: Path) -> None:
    """Start the local federation (if any), submit the app, and stop everything whatever happens."""
    try:
        if federation:
            federation.start()
        address = fed.superlink or federation.control
        connection(Path(env["FLWR_HOME"]), address, fed.superlink_insecure or federation is not None,
                   fed.root_certificates)
        submit = subprocess.Popen([flower("flwr"), "run", str(app), "bigmodel", "--stream"], env=env,
                                  start_new_session=True)
        try:
            code = watch(submit, fed.rounds * fed.round_timeout + SUBMIT_MARGIN, federation, out)
        finally:
            signal_group(submit, signal.SIGKILL)
            submit.wait()
        if code != 0:
            raise BigModelError(f"flwr run exited with status {code}; logs in {out / 'flower'}")
    finally:
        if federation:
            federation.stop()


def watch(submit: subprocess.Popen, seconds: float, federation: LocalFederation | None, out: Path) -> int:
    """`flwr run`'s exit status, once it exits; an error if the local SuperLink dies first or it takes
    longer than every round's timeout together (a hung submission must not hold the command forever)."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return submit.wait(timeout=1)
        if federation is not None and (reason := federation.failed()):
            raise BigModelError(f"federated run stopped: {reason}")
        if time.monotonic() > deadline:
            raise BigModelError(f"flwr run did not finish within {seconds:.0f} s (--rounds × --round-timeout, plus "
                                f"{SUBMIT_MARGIN:.0f} s); stopped it; logs in {out / 'flower'}")
