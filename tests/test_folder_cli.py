"""configs/folder.yaml through the real CLI on a tiny folder of mixed-size images without masks:
label, then fit, with no torchmetrics or W&B warning about it, and review composites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import REPO, run_cli

pytestmark = pytest.mark.slow

CONFIG = REPO / "configs" / "folder.yaml"
SIZES = [(40, 56), (64, 48), (50, 50), (36, 72)]  # (H, W): no two alike
# The tiny random models of demo_online.yaml and a small net, instead of real weights.
TINY = [
    "--data.source.init_args.root", "my_images",
    "--data.train_labels.init_args.detector", "tiny",
    "--data.train_labels.init_args.sam_checkpoint", "tiny",
    "--model.net.init_args.backbone", "resnet18",
    "--model.net.init_args.pretrained", "null",
    "--model.net.init_args.freeze_bn", "false",
    "--data.batch_size", "2", "--data.crop_size", "33", "--data.num_workers", "0",
    "--data.pin_memory", "false", "--trainer.accelerator", "cpu",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip
WARNINGS = ("called before the", "Images sizes do not match", "Traceback")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with my_images/ (4 JPEGs of different sizes) and labels.txt."""
    work = tmp_path_factory.mktemp("folder")
    root = work / "my_images"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = ["# file name, then its classes"]
    for i, (height, width) in enumerate(SIZES):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"photo{i}.jpg")
        lines.append(f"photo{i}.jpg {'cat' if i % 2 else 'cat,dog'}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return work


def test_label_then_fit_on_a_mixed_size_folder(work: Path) -> None:
    env = {"WANDB_MODE": "offline"}
    label = run_cli(
        ["label", "--config", str(CONFIG), *TINY], work, env=env, unset=("WANDB_SILENT",)
    )
    output = label.stdout + label.stderr
    assert label.returncode == 0, output[-3000:]
    assert not [w for w in WARNINGS if w in output], output[-3000:]
    assert "labelled 4 images" in output
    assert "no ground truth in this split" in output
    cache = list((work / "runs" / "folder" / "pseudo_labels").glob("my_images-*/*/photo*.png"))
    assert len(cache) == 4

    fit = run_cli(
        ["fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", "1"],
        work, env=env, unset=("WANDB_SILENT",),
    )  # fmt: skip
    output = fit.stdout + fit.stderr
    assert fit.returncode == 0, output[-3000:]
    assert not [w for w in WARNINGS if w in output], output[-3000:]
    # The label pass made a W&B run of its own before; fit's is the one with predictions.
    (run_dir,) = {
        p.parents[1]
        for p in (work / "runs" / "folder" / "wandb").glob("offline-run-*/review/val_*.png")
    }
    assert run_dir.name.startswith("offline-run-")
    val = sorted((run_dir / "review").glob("val_predictions_step*.png"))
    train = sorted((run_dir / "review").glob("train_labels_step*.png"))
    assert len(val) == 4 and len(train) == 2
    heights = {np.asarray(Image.open(p)).shape[0] for p in val}
    assert len(heights) > 1  # each composite at its image's own size
    # W&B got one size per key: the padded overlays all have the largest image's size.
    overlays = list((run_dir / "files" / "media" / "images" / "val").glob("predictions_*.png"))
    assert overlays
    assert {Image.open(p).size for p in overlays} == {(72, 64)}
