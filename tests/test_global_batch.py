"""Every optimiser step sees the same 10 images, weighted the same, on 1, 2 and 3 DDP ranks
(gloo, CPU): the gradient after DDP's all-reduce equals the one-process gradient, step by step
(tests/ddp_grad_probe.py runs the real module and data module under Lightning DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent / "ddp_grad_probe.py"
WORLDS = (1, 2, 3)


def test_each_step_has_the_one_rank_gradient_on_2_and_3_ranks(tmp_path: Path) -> None:
    from ddp_grad_probe import IMAGE_SIZE, NUM_TRAIN

    from wsss_pl.data.synthetic import SyntheticVOC

    data = tmp_path / "data"
    SyntheticVOC(str(data), num_train=NUM_TRAIN, num_val=1, image_size=IMAGE_SIZE).prepare_data()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # The three runs at once (each picks a free port): most of their time is start-up.
    processes = {
        world: subprocess.Popen(
            [sys.executable, str(PROBE), str(data), str(tmp_path), str(world)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for world in WORLDS
    }
    for world, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{world} ranks:\n{output[-4000:]}"
        if world == 3:  # the resolved split is printed at fit start
            assert "per-rank batches [4, 3, 3]" in output

    grads = {world: torch.load(tmp_path / f"grads_w{world}.pt") for world in WORLDS}
    steps = {}
    for world in WORLDS:
        ranks = [
            json.loads((tmp_path / f"ids_w{world}_r{r}.json").read_text()) for r in range(world)
        ]
        # Step s of this run: the ranks' ids in rank order, with their global batch positions.
        steps[world] = [
            [(i, p) for rank in ranks for i, p in zip(rank[s]["ids"], rank[s]["positions"], strict=True)]
            for s in range(2)
        ]  # fmt: skip
        assert [len(r[0]["ids"]) for r in ranks] == {1: [10], 2: [5, 5], 3: [4, 3, 3]}[world]
    for world in (2, 3):
        assert steps[world] == steps[1]  # the same 10 images in the same places, every step
    for step in steps[1]:
        assert [p for _, p in step] == list(range(10))
    assert len(grads[1]) == 2
    for step in range(2):
        reference = grads[1][step]
        scale = float(reference.abs().max())
        assert scale > 0.1  # a real gradient, far from zero
        for world in (2, 3):
            # Float tolerance: the ranks' partial sums are added in another order (measured
            # differences about 2e-7 of the largest entry).
            difference = float((grads[world][step] - reference).abs().max())
            assert difference <= 1e-5 * scale, (world, step, difference, scale)
    # The tolerance tells steps apart: the two steps' gradients differ by far more.
    assert float((grads[1][0] - grads[1][1]).abs().max()) > 1e3 * 1e-5 * float(
        grads[1][0].abs().max()
    )
