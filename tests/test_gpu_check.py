"""benchmarks/gpu_check.sh, the one script a GPU session runs, in its SMOKE mode: every part on this
CPU with the tiny models and tiny counts, so a broken command is found here, not on a GPU's clock."""

import os
import sys
from pathlib import Path

from helpers import run

ROOT = Path(__file__).resolve().parent.parent


def test_every_part_of_the_gpu_check_runs(tiny_dir, tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, "COMMIT": "test"}
    # The parts' time limits are a GPU run's budget; here a loaded CPU may take minutes over them.
    env.update({f"{part}_LIMIT": "900" for part in ("STEPS", "SAMPLE", "GPU", "PRECISION", "PROFILE")})
    # run: bench_engine.py, started by the script under `timeout` (a process group of its own), ends with the test
    proc = run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = {name: (tmp_path / f"{name}.txt").read_text() for name in ("steps", "gpu", "precision", "profile")}
    for name, text in outputs.items():
        assert f"== {name}: rc 0," in text, text[-3000:]
    # What each part is for made it to its output:
    assert outputs["steps"].count("ms/step") == 3  # three variants, each from its own process
    assert "| evaluate |" in outputs["gpu"] and "full-table estimate" in outputs["gpu"]
    assert "tf32 vs fp32, any seeds" in outputs["precision"] and "tf32: " in outputs["precision"]
    assert "evaluation run of 200 texts" in outputs["profile"] and "host syncs in steps 41-43" in outputs["profile"]
    assert "commit test" in (tmp_path / "machine.txt").read_text()
