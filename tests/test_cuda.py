"""CUDA paths (run by scripts/gpu_check.sh; skipped without a CUDA device): bf16 labelling with the
SAM fast path, pinned host->device transfer, and a 1-GPU fit + label pass of the online demo, with
no silent fallback to the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_runner import REPO, run_cli
from wsss_pl.classes import VOC

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_sdpa_encoder_bf16_agrees_with_fp32_on_cuda() -> None:
    from wsss_pl.labeling.segmenters.sam_fast import use_attention
    from wsss_pl.labeling.tiny import tiny_sam

    sam = tiny_sam().cuda()
    pixels = torch.randn(2, 3, 1024, 1024, device="cuda")
    with torch.no_grad():
        reference = sam.image_encoder(pixels)
        use_attention(sam.image_encoder, "sdpa")
        fp32 = sam.image_encoder(pixels)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = sam.image_encoder(pixels)
    assert fp32.device.type == "cuda" and bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fp32, reference, atol=1e-4, rtol=0)
    scale = reference.abs().max().item()
    assert (bf16.float() - reference).abs().max().item() < 0.05 * scale


def test_labeler_bf16_fast_path_stays_on_cuda() -> None:
    from wsss_pl.labeling.labeler import PseudoLabeler
    from wsss_pl.labeling.tiny import tiny_detector, tiny_segmenter

    labeler = PseudoLabeler(
        tiny_detector(box_threshold=0.0), tiny_segmenter(attention="sdpa"), VOC
    ).cuda()
    images = [torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8, device="cuda")] * 2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        results = labeler(images, [["dog"], ["cat", "person"]])
    assert all(r.label.device.type == "cuda" and r.label.shape == (90, 120) for r in results)
    assert all(r.metadata["instances"] for r in results)  # threshold 0: every image has boxes


def test_pinned_batch_transfer() -> None:
    batch = torch.zeros(4, 3, 64, 64, dtype=torch.uint8).pin_memory()
    assert batch.is_pinned()
    moved = batch.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and int(moved.sum()) == 0


def _demo_args(command: str) -> list[str]:
    return [
        command, "--config", str(REPO / "configs" / "demo_online.yaml"),
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--data.source.init_args.num_train", "16", "--data.source.init_args.num_val", "4",
        "--data.batch_size", "4", "--data.num_workers", "1", "--data.pin_memory", "true",
        "--data.train_labels.init_args.sam_attention", "sdpa",
    ]  # fmt: skip


def test_label_pass_then_fit_on_one_gpu(tmp_path: Path) -> None:
    label = run_cli(_demo_args("label"), tmp_path)
    assert label.returncode == 0, label.stdout[-2000:] + label.stderr[-4000:]
    (report,) = tmp_path.glob("runs/demo_online/pseudo_labels/*/*/label_pass/rank0.json")
    assert len(json.loads(report.read_text())["labelled"]) == 16
    fit = run_cli([*_demo_args("fit"), "--trainer.max_epochs", "1"], tmp_path)
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-4000:]
    assert "GPU available: True (cuda), used: True" in fit.stderr + fit.stdout
    assert (tmp_path / "runs/demo_online/checkpoints/last.ckpt").is_file()
