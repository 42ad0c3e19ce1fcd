"""Federated fine-tuning through Flower's real processes: a SuperLink and SuperNodes on loopback."""

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel.data.labelled import Example
from bigmodel.federated.partition import partition
from bigmodel.model.checkpoint import load_checkpoint

from .conftest import free_port, metric_rows, run_cli
from .test_finetune import synthetic, write_rows


def test_partitions_are_disjoint_and_label_skew_follows_alpha():
    rows = [Example(f"text {i}", "abcd"[i % 4]) for i in range(400)]
    iid = partition(rows, 4, "iid", 0.5, seed=0)
    assert sorted(len(p) for p in iid) == [100] * 4
    assert sorted(e.text for p in iid for e in p) == sorted(e.text for e in rows)

    def dominant_share(parts):
        return sum(max(collections.Counter(e.label for e in p).values()) / len(p) for p in parts) / len(parts)

    skewed = partition(rows, 4, "label-skew", 0.1, seed=0)
    assert sorted(e.text for p in skewed for e in p) == sorted(e.text for e in rows)
    assert dominant_share(skewed) > 0.6 > 0.35 > dominant_share(iid)
    assert partition(rows, 4, "label-skew", 0.1, seed=0) == skewed  # the seed decides


def federated(trained_run, tmp_path, *flags):
    val = write_rows(tmp_path / "val.csv", synthetic(60, 1))
    train = write_rows(tmp_path / "train.csv", synthetic(240, 0))
    return run_cli("federated", "--init", str(trained_run), "--train", str(train), "--val", str(val),
                   "--out", str(tmp_path / "fed"), "--lr", "3e-3", "--batch-size", "16", "--max-length", "32",
                   *flags, timeout=900)


def test_rounds_run_on_flower_processes_then_resume(trained_run, tmp_path):
    result = federated(trained_run, tmp_path, "--clients", "2", "--rounds", "1", "--epochs", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metric_rows(tmp_path / "fed")
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.2 and rows[-1]["clients"] == 2
    assert rows[1]["examples"] == 2 * 480  # four local epochs over 120 examples each
    clients = (tmp_path / "fed" / "clients.csv").read_text().splitlines()
    assert len(clients) == 1 + 2
    assert (tmp_path / "fed" / "loss.png").stat().st_size > 10_000
    logs = (tmp_path / "fed" / "flower" / "logs")
    assert {p.name for p in logs.iterdir()} >= {"superlink.log", "supernode-0.log", "supernode-1.log"}
    model, _, _ = load_checkpoint(tmp_path / "fed" / "last", with_head=True)
    assert model.head_config.labels == ["evil", "good"]

    port = free_port()
    resumed = federated(trained_run, tmp_path, "--clients", "2", "--rounds", "2", "--epochs", "4", "--resume",
                        "--port-base", str(port))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"on 127.0.0.1:{port}." in (logs / "superlink.log").read_text()  # --port-base chose the SuperLink's port
    assert [int(r["round"]) for r in metric_rows(tmp_path / "fed")] == [0, 1, 2]
    assert "2 rounds; best global accuracy" in resumed.stdout


def test_a_client_killed_mid_round_does_not_stop_training(trained_run, tmp_path):
    val = write_rows(tmp_path / "val.csv", synthetic(60, 1))
    train = write_rows(tmp_path / "train.csv", synthetic(240, 0))
    command = [sys.executable, "-m", "bigmodel.cli", "federated", "--init", str(trained_run), "--train", str(train),
               "--val", str(val), "--out", str(tmp_path / "fed"), "--clients", "3", "--min-clients", "2",
               "--rounds", "1", "--epochs", "30", "--lr", "3e-3", "--batch-size", "16", "--max-length", "32",
               "--round-timeout", "600"]
    marker = f"bigmodel-test-{os.getpid()}-{time.time_ns()}"  # inherited by every process the command starts
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "BIGMODEL_TEST_MARK": marker})
    victim_log = tmp_path / "fed" / "flower" / "logs" / "supernode-2.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and "train" not in (victim_log.read_text() if victim_log.exists() else ""):
        time.sleep(0.5)
    time.sleep(2)  # the victim is fine-tuning now
    killed = subprocess.run(["pgrep", "-f", "client=2"], capture_output=True, text=True).stdout.split()
    assert killed, "the third SuperNode was not found"
    for pid in killed:
        os.killpg(int(pid), signal.SIGKILL)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]
    rows = metric_rows(tmp_path / "fed")
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert rows[1]["clients"] == 2  # the round closed with the two clients left
    deadline = time.monotonic() + 10  # SIGKILL has been sent to every group: give the kernel a moment
    while (left := carrying(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Flower processes outlived the command: {left}"


def carrying(marker: str) -> list[str]:
    """The command lines of live processes whose environment holds `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes() and \
                    "Z" not in (proc / "stat").read_text().split(")")[-1].split()[:1]:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.parametrize("flags,fragment", [
    (["--partition", "skewed"], "--partition must be one of iid, label-skew"),
    (["--clients", "0"], "--rounds and --clients must be at least 1"),
    (["--val", "missing.csv"], "missing.csv: no such file"),
    (["--dp-epsilon", "8"], "--dp-epsilon is not supported by federated yet"),
])
def test_bad_federated_settings_are_one_line(trained_run, tmp_path, flags, fragment):
    train = write_rows(tmp_path / "train.csv", synthetic(20, 0))
    result = run_cli("federated", "--init", str(trained_run), "--train", str(train), "--val", str(train),
                     "--out", str(tmp_path / "fed"), *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def tls_files(folder):
    """A throwaway CA and a certificate it signs for 127.0.0.1, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "server")}
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bigmodel test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(keys["ca"].public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(keys["ca"], hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(keys["server"].public_key()).serial_number(2).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .sign(keys["ca"], hashes.SHA256()))
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM),
             "server.pem": server.public_bytes(serialization.Encoding.PEM),
             "server.key": keys["server"].private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption())}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: str(folder / name) for name in files}


def test_the_documented_multi_machine_commands_work_over_tls(trained_run, tmp_path):
    """The federated guide's commands for separate machines, on loopback: a TLS SuperLink, two SuperNodes that hold
    their own data, and `bigmodel federated --superlink` submitting the run."""
    from bigmodel.federated.launch import flower, free_port

    tls = tls_files(tmp_path)
    port = free_port()
    data = [write_rows(tmp_path / f"owner{i}.csv", synthetic(120, i)) for i in range(2)]
    val = write_rows(tmp_path / "val.csv", synthetic(60, 9))
    processes = [subprocess.Popen([flower("flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
                                   "--ssl-ca-certfile", tls["ca.crt"], "--ssl-certfile", tls["server.pem"],
                                   "--ssl-keyfile", tls["server.key"]], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)]
    time.sleep(3)
    for i, path in enumerate(data):
        processes.append(subprocess.Popen([flower("flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                                           "--root-certificates", tls["ca.crt"], "--port", str(free_port()),
                                           "--node-config", f'data="{path}" client={i}'],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
    try:
        result = run_cli("federated", "--superlink", f"127.0.0.1:{port}", "--root-certificates", tls["ca.crt"],
                         "--clients", "2", "--init", str(trained_run), "--val", str(val), "--rounds", "1",
                         "--epochs", "1", "--lr", "3e-3", "--batch-size", "16", "--max-length", "32",
                         "--out", str(tmp_path / "fed"), timeout=600)
    finally:
        for proc in processes:
            os.killpg(proc.pid, signal.SIGKILL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metric_rows(tmp_path / "fed")
    assert [int(r["round"]) for r in rows] == [0, 1] and rows[1]["clients"] == 2 and rows[1]["examples"] == 240


def test_the_server_knows_every_label_it_can_read_and_a_client_names_one_it_lacks(trained_run, tmp_path):
    """A label only the training partitions hold is in the global head; a client whose label the head
    lacks (a remote federation's server sees only its validation file) gets one clear line, not a KeyError."""
    from bigmodel.config import FederatedConfig, FinetuneConfig
    from bigmodel.errors import BigModelError
    from bigmodel.federated.rounds import GlobalModel, local_round

    rows = synthetic(30, 0)
    train = write_rows(tmp_path / "train.csv", [*rows, ("rare words", "neutral")])
    val = write_rows(tmp_path / "val.csv", rows[:10])
    local = FinetuneConfig(init=str(trained_run), epochs=1, batch_size=8)
    server = GlobalModel(FederatedConfig(train=str(train), val=str(val), out=str(tmp_path / "fed")), local)
    assert server.model.head_config.labels == ["evil", "good", "neutral"]
    assert server.model.head_config.pooling == "last"  # a decoder's head reads its last token

    remote = GlobalModel(FederatedConfig(val=str(val), out=str(tmp_path / "remote")), local)
    with pytest.raises(BigModelError, match="labels the model's head does not have: 'neutral'"):
        local_round(remote.message(), remote.weights(), str(train), seed=0)
