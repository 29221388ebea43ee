"""Threading races of the C WAL, driven from C (tests/wal/c/stress.c) at a speed Python's GIL
would not reach: rotation while another thread's write is in flight, close while appenders run.
Every acknowledged append must be in the log, byte for byte, after a reopen."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
STRESS = Path(__file__).resolve().parent / "c" / "stress.c"


@pytest.fixture(scope="module")
def stress_binary(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("stress") / "stress"
    sources = [str(p) for p in sorted(CSRC.glob("*.c"))]
    subprocess.run(
        ["gcc", "-O1", "-pthread", f"-I{CSRC}", str(STRESS), *sources, "-o", str(binary)],
        check=True,
    )
    return binary


@pytest.mark.parametrize("mode,rounds", [("rotate", 3), ("close", 40)])
def test_acknowledged_appends_survive_racing_rotation_and_close(
    stress_binary, tmp_path, mode, rounds
):
    run = subprocess.run(
        [str(stress_binary), str(tmp_path / "log"), mode, str(rounds)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
