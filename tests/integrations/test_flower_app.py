"""The example app (examples/flower-app) in a real localhost deployment: one SuperLink, two SuperNodes.

The processes are started on free ports of 127.0.0.1 and always stopped by their PIDs. The run (round 1
on the fallback plan, so that every message is a train message; the round-1 query is tested in-process)
must finish its rounds, learn over them, select from the scores that rode on the train replies, and move
fewer bytes than full FedAvg would in every round.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
httpx = pytest.importorskip("httpx")

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("flower-superlink did not become healthy")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started (and the processes it started) by its PID."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.flower
def test_example_app_in_a_localhost_deployment(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "flwr-home"
    home.mkdir()
    link, node0, node1 = free_ports(3)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": "1",  # tiny model: one torch thread per process avoids oversubscription
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        logs.append(log)
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,  # its own process group, stopped as a whole by PID
        )
        procs.append(proc)
        return proc

    try:
        superlink = start(
            "superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link)
        )
        wait_healthy(link, superlink)
        for pid, port in enumerate((node0, node1)):
            start(
                f"supernode{pid}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--node-config",
                f"partition-id={pid}",
                "--port",
                str(port),
            )
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(app),
                "local-deployment",
                "--stream",
                "--run-config",
                f"num-server-rounds=2 first-round='fallback' save-dir='{tmp_path / 'saved'}'",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
    out = run.stdout + run.stderr
    tail = out[-4000:] + "".join(
        (tmp_path / f"{n}.log").read_text()[-1500:] for n in ("superlink", "supernode0")
    )
    assert "f3ocus-flower-app finished: 2 rounds" in out, tail
    accuracy = [float(a) for a in re.findall(r"f3ocus-flower-app round \d+: accuracy ([\d.]+)", out)]
    assert len(accuracy) == 3 and accuracy[-1] > accuracy[1] > accuracy[0], accuracy  # learns over rounds
    ratios = [float(r) for r in re.findall(r"f3ocus: round \d+ traffic: .*ratio ([\d.]+)", out)]
    assert len(ratios) == 2 and all(r < 1 for r in ratios), ratios  # no round-1 query: every round
    moved, fedavg = re.search(r"(\d+) bytes moved \(full FedAvg: (\d+)", out).groups()
    assert int(moved) < int(fedavg)
    plan = re.search(r"f3ocus: round 2 plan \(new\): \{(.*)\}", out).group(1)  # from the round-1 scores
    nodes = {int(n) for n in re.findall(r"(\d+): \[", plan)}
    assert len(nodes) == 2 and 1 not in nodes, plan  # the SuperNodes' own ids, never the SuperLink's 1
    assert (tmp_path / "saved" / "state.json").exists() and (tmp_path / "saved" / "arrays.npz").exists()
