"""The DDP example of docs/PYTHON.md, under torchrun with two CPU ranks (gloo): two short
epochs, a checkpoint mid-epoch, and a resume in a new torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import ACCESS_KEY, N_SAMPLES, SECRET_KEY  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "PYTHON.md"


def torchrun(server, ckpt, *extra):
    exe = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    cmd = [
        exe, "--standalone", "--nproc_per_node", "2", str(EXAMPLE),
        "--data", "s3://bkt/ds", "--ckpt", ckpt, "--endpoint", server.endpoint, "--path-style",
        "--batch-size", "8", "--workers", "1", *extra,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


def test_the_docs_show_the_example_that_is_tested():
    assert EXAMPLE.read_text().strip() in DOCS.read_text()


def test_the_ddp_example_trains_checkpoints_and_resumes(server, dataset_url):
    n = 2 * N_SAMPLES  # the example reads every object under ds/ (samples and labels)
    steps_per_epoch = -(-(-(-n // 2)) // 8)  # ceil(ceil(n / 2 ranks) / 8)
    whole = torchrun(server, "s3://bkt/ckpt-whole")
    assert json.loads(whole.strip().splitlines()[-1]) == {"steps": 2 * steps_per_epoch, "epochs": 2}
    # Stop mid-epoch 0, then resume in a new torchrun.
    torchrun(server, "s3://bkt/ckpt-resume", "--stop-after", "3")
    out = torchrun(server, "s3://bkt/ckpt-resume")
    assert "resumed at step 3: epoch 0, 24 samples in" in out
    assert json.loads(out.strip().splitlines()[-1]) == {"steps": 2 * steps_per_epoch, "epochs": 2}
