"""The example Flower app (examples/flower-app) runs end to end with `flwr run` (Ray simulation)."""

from __future__ import annotations

import os
import re
import shutil
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.slow
@pytest.mark.flower
def test_example_app_finishes_with_flwr_run(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
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
    log = (tmp_path / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_healthy(port, superlink)
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(app),
                "test",
                "--stream",
                "--federation-config",
                "num-supernodes=3",
                "--run-config",
                "num-server-rounds=2",
                "--run-config",
                "local-steps=5",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:
        superlink.terminate()
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            superlink.kill()
            superlink.wait()
        log.close()
    out = run.stdout + run.stderr
    assert "f3ocus-flower-app finished: 2 rounds" in out, out[-4000:]
    plans = re.findall(r"f3ocus plan, round (\d+): (\{.*\})", out)
    assert [r for r, _ in plans] == ["1", "2"], out[-4000:]
    assert "Sampled 3 nodes" in out
