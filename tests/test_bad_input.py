"""Bad input through the real CLI: one line naming the key, file, id or box; exit code 2; no
traceback; every file that existed before is byte-identical after (issue 14).

The cases run ``wsss_pl.cli.main`` in this process (``run_cli_in_process``): the real argument
parsing, command and error handler, without a new interpreter per case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, REPO, run_cli_in_process
from wsss_pl.classes import VOC
from wsss_pl.cli import user_error_message
from wsss_pl.data.synthetic import make_synthetic_voc
from wsss_pl.errors import DataError
from wsss_pl.models import DeepLabV2


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _assert_one_line_error(
    result: Any, before: dict[str, bytes], root: Path, *needles: str
) -> None:
    """Exit 2, no traceback, one stderr line holding every needle, old files unchanged."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 2, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = _snapshot(root)
    changed = [name for name, data in before.items() if after.get(name) != data]
    assert not changed, changed


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model.crf.bi_xy_std", "0"], "model.crf.bi_xy_std must be a number > 0"),
        (["--model.crf.pos_xy_std", "0"], "model.crf.pos_xy_std must be a number > 0"),
        (["--model.crf.bi_rgb_std", "-1"], "model.crf.bi_rgb_std must be a number > 0"),
        (["--model.crf.iterations", "-1"], "model.crf.iterations must be an integer >= 1"),
        (["--model.msc_scales", "[1.0, 0]"], "model.msc_scales must be a number > 0"),
        (
            ["--data.train_labels.init_args.write_workers", "-1"],
            "data.train_labels.init_args.write_workers must be an integer >= 0",
        ),
        (
            ["--data.train_labels.init_args.exclusion_words", '{"diningtable": ["plate", ""]}'],
            "data.train_labels.init_args.exclusion_words must be a non-empty string",
        ),
    ],
)
def test_bad_options_are_refused_where_declared(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    """``--print_config`` already refuses them: the type of the option says what is allowed."""
    before = _snapshot(tmp_path)
    config = REPO / "configs" / "voc.yaml"
    result = run_cli_in_process(["fit", "--config", str(config), *args, "--print_config"], tmp_path)
    _assert_one_line_error(result, before, tmp_path, needle)


def test_crf_params_refuse_what_would_crash_pydensecrf() -> None:
    from wsss_pl.errors import ConfigError
    from wsss_pl.models.crf import CRFParams

    for bad in ({"bi_xy_std": 0}, {"pos_xy_std": 0.0}, {"iterations": 0}, {"bi_weight": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CRFParams(**bad)
    assert type(CRFParams(iterations=3).iterations) is int  # plain values for the checkpoint
    assert CRFParams(pos_weight=0).pos_weight == 0.0  # a weight of 0 turns its kernel off


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--model.net.init_args.pretrained", "deeplab_init.caffemodel"],
            ("deeplab_init.caffemodel is a Caffe model", "backbone is resnet18"),
        ),
        (
            ["--model.net.init_args.atrous_rates", "[]"],  # a plain ValueError of the class
            ("atrous rates must be a non-empty list", "ValueError; WSSS_PL_DEBUG=1"),
        ),
    ],
)
def test_bad_model_settings_are_one_line(
    tmp_path: Path, args: list[str], needles: tuple[str, ...]
) -> None:
    # The weights file exists (a missing one is named up front, before the net is built): what
    # is refused here is the setting itself.
    (tmp_path / "deeplab_init.caffemodel").write_bytes(b"not read: the backbone is refused first")
    before = _snapshot(tmp_path)
    command = ["fit", "--config", str(DEMO_CONFIG), *FAST_OVERRIDES, "--trainer.logger", "false"]
    result = run_cli_in_process([*command, *args], tmp_path)
    _assert_one_line_error(result, before, tmp_path, *needles)


def test_user_error_message_of_plain_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    wrapped = RuntimeError("while building")
    wrapped.__cause__ = FileNotFoundError(2, "No such file or directory", "a/b.json")
    assert user_error_message(wrapped) == (
        "a/b.json: No such file or directory (FileNotFoundError; WSSS_PL_DEBUG=1 shows the "
        "traceback)"
    )
    assert user_error_message(KeyError("dog")).startswith("unknown key 'dog' (KeyError")
    assert user_error_message(DataError("x\ny")) == "x y"
    assert user_error_message(RuntimeError("a bug")) is None  # a bug keeps its traceback
    monkeypatch.setenv("WSSS_PL_DEBUG", "1")
    assert user_error_message(ValueError("v")) is None


# --------------------------------------------------------------------------- box files


def _voc_xml(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (64, 48)) -> None:
    xmin, ymin, xmax, ymax = box
    path.write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size><object>"
        f"<name>dog</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
        f"<ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def _xml_swapped(data: Path, ids: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    _voc_xml(data / "VOC2012" / "Annotations" / f"{ids[1]}.xml", (30, 5, 10, 20))
    return {}, (f"{ids[1]}.xml", "[29.0, 4.0, 10.0, 20.0]", "x2 > x1")


def _xml_outside(data: Path, ids: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    # Past the right edge entirely (a box that only reaches past it is clipped, not refused).
    _voc_xml(data / "VOC2012" / "Annotations" / f"{ids[0]}.xml", (70, 5, 300, 20))
    return {}, (f"{ids[0]}.xml", "[69.0, 4.0, 300.0, 20.0]", "does not overlap the 64x48 image")


def _yolo(line: str) -> Callable[[Path, list[str]], tuple[dict[str, Any], tuple[str, ...]]]:
    def make(data: Path, ids: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
        folder = data.parent / "yolo"
        folder.mkdir()
        (folder / f"{ids[0]}.txt").write_text("11 0.5 0.5 0.2 0.2\n")
        (folder / f"{ids[1]}.txt").write_text(f"11 0.5 0.5 0.2 0.2\n{line}\n")
        return {"box_file": str(folder)}, (f"{ids[1]}.txt:2", repr(line), "normalised to [0, 1]")

    return make


def _json(
    content: Callable[[list[str]], Any], *needles: str
) -> Callable[[Path, list[str]], tuple[dict[str, Any], tuple[str, ...]]]:
    def make(data: Path, ids: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
        path = data.parent / "boxes.json"
        path.write_text(json.dumps(content(ids)))
        return {"box_file": str(path)}, ("boxes.json", *(n.format(id=ids[0]) for n in needles))

    return make


def _dog(box: list[Any]) -> list[dict[str, Any]]:
    return [{"box": box, "class": "dog"}]


BOX_CASES = {
    "voc_xml_xmax_below_xmin": _xml_swapped,
    "voc_xml_outside_image": _xml_outside,
    "yolo_above_one": _yolo("11 0.5 0.5 1.5 0.2"),
    "yolo_nan": _yolo("11 nan 0.5 0.2 0.2"),
    "json_keyed_by_file_name": _json(
        lambda ids: {f"{i}.jpg": _dog([1, 2, 11, 12]) for i in ids},
        "4 of 4 ids match no image",
        "'{id}.jpg'",
    ),
    "json_empty": _json(lambda ids: {}, "has no boxes"),
    "json_non_numeric": _json(
        lambda ids: {ids[0]: _dog(["1", 2, 11, 12])}, "'{id}'", "['1', 2, 11, 12]", "4 finite"
    ),
    "json_outside_image": _json(
        lambda ids: {ids[0]: _dog([10, 48, 11, 400])}, "id '{id}'", "not overlap the 64x48 image"
    ),
    "json_left_of_image": _json(
        lambda ids: {ids[0]: _dog([-30, 5, 0, 20])}, "id '{id}'", "[-30.0, 5.0, 0.0, 20.0]"
    ),
}


@pytest.mark.parametrize("case", list(BOX_CASES))
def test_bad_boxes_are_one_line_errors_not_background(tmp_path: Path, case: str) -> None:
    data = make_synthetic_voc(tmp_path / "voc", num_train=4, num_val=1, image_size=(48, 64))
    ids = (data / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    extra, needles = BOX_CASES[case](data, ids)
    labels = {
        "class_path": "wsss_pl.labeling.box_prompts.BoxPromptLabels",
        "init_args": {"cache_root": str(tmp_path / "cache"), "sam_checkpoint": "tiny", **extra},
    }
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_labels": labels}}))
    before = _snapshot(tmp_path)
    result = run_cli_in_process(
        [
            "label",
            "--config",
            str(DEMO_CONFIG),
            "--config",
            str(config),
            "--data.source.init_args.root",
            str(data),
            "--data.source.init_args.num_train",
            "4",
            "--data.source.init_args.num_val",
            "1",
            "--data.source.init_args.image_size",
            "[48, 64]",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "0",
            "--trainer.logger",
            "false",
            "--trainer.accelerator",
            "cpu",
        ],  # fmt: skip
        tmp_path,
    )
    _assert_one_line_error(result, before, tmp_path, *needles)


def test_coco_annotation_of_no_image_is_one_line(tmp_path: Path) -> None:
    from test_coco import _tiny_coco

    root = _tiny_coco(tmp_path / "coco", {"id": 9, "image_id": 77, "category_id": 18,
                                          "iscrowd": 0, "bbox": [1, 1, 5, 5]})  # fmt: skip
    source = {"class_path": "wsss_pl.data.coco.COCO",
              "init_args": {"root": str(root), "year": 2017, "train_split": "val",
                            "val_split": "val", "download": False}}  # fmt: skip
    labels = {"class_path": "wsss_pl.labeling.box_prompts.BoxPromptLabels",
              "init_args": {"cache_root": str(tmp_path / "cache"), "sam_checkpoint": "tiny"}}  # fmt: skip
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": source, "train_labels": labels}}))
    before = _snapshot(tmp_path)
    result = run_cli_in_process(
        ["label", "--config", str(DEMO_CONFIG), "--config", str(config),
         "--data.num_workers", "0", "--trainer.logger", "false", "--trainer.accelerator", "cpu"],
        tmp_path,
    )  # fmt: skip
    _assert_one_line_error(
        result, before, tmp_path, "instances_val2017.json", "annotation 9", "image_id 77"
    )


def test_half_pixel_crowd_boxes_follow_the_pixel_centre_rule() -> None:
    """A pixel is inside when its centre is in [x1, x2): at .5 edges, round-half-to-even would
    drop column 1 and add column 7 here."""
    from wsss_pl.labeling.box_prompts import BoxLabeler, ImageBoxes
    from wsss_pl.labeling.tiny import tiny_segmenter

    image = torch.randint(0, 255, (3, 12, 10), dtype=torch.uint8)
    boxes = ImageBoxes(
        torch.tensor([[1.5, 3.5, 7.5, 9.5]]), torch.tensor([12]), torch.tensor([True])
    )
    (result,) = BoxLabeler(tiny_segmenter(), VOC)([image], [boxes], [[]])
    expected = torch.zeros(12, 10, dtype=torch.bool)
    expected[3:9, 1:7] = True  # centres 3.5..8.5 (< 9.5) and 1.5..6.5 (< 7.5)
    assert torch.equal(result.label == 255, expected)


# --------------------------------------------------------------------------- outputs


def test_export_labels_never_replaces_a_file_without_overwrite(tmp_path: Path) -> None:
    from test_export_cli import _filled_cache

    cache = _filled_cache(tmp_path / "cache")
    output = tmp_path / "review.json"
    output.write_text("my own review notes\n")
    before = _snapshot(tmp_path)
    command = ["export-labels", "--cache", str(cache.directory), "--output", str(output)]
    result = run_cli_in_process(command, tmp_path)
    _assert_one_line_error(result, before, tmp_path, "review.json exists", "--overwrite")
    assert run_cli_in_process([*command, "--overwrite"], tmp_path).returncode == 0
    assert len(json.loads(output.read_text())["annotations"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "review.json"]  # no temp file


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a random DeepLab-v2 R18 (Lightning layout: ``state_dict`` of ``net.*``)."""
    torch.manual_seed(0)
    net = DeepLabV2(num_classes=21, backbone="resnet18", freeze_bn=False)
    path = tmp_path_factory.mktemp("r18") / "r18.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _r34_config(root: Path) -> Path:
    config = root / "r34.yaml"
    net = {"class_path": "wsss_pl.models.deeplab_v2.DeepLabV2",
           "init_args": {"num_classes": 21, "backbone": "resnet34"}}  # fmt: skip
    config.write_text(yaml.safe_dump({"model": {"net": net}}))
    return config


@pytest.mark.parametrize(
    "case", ["existing_out", "out_is_folder", "read_only", "parent_is_file", "wrong_net"]
)
def test_export_model_errors_are_one_line(tmp_path: Path, r18_checkpoint: Path, case: str) -> None:
    if case == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out = tmp_path / "model.onnx"
    extra: list[str] = []
    if case == "existing_out":
        out.write_bytes(b"an earlier export")
        needles: tuple[str, ...] = ("model.onnx exists", "--overwrite")
    elif case == "out_is_folder":
        out.mkdir()
        needles = ("model.onnx is a folder",)
    elif case == "read_only":
        out = tmp_path / "locked" / "model.onnx"
        out.parent.mkdir()
        out.parent.chmod(0o555)
        needles = ("cannot write", "model.onnx", "Permission denied")
    elif case == "parent_is_file":
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        out = tmp_path / "notes.txt" / "model.onnx"
        needles = ("cannot write", "notes.txt/model.onnx")
    else:
        extra = ["--config", str(_r34_config(tmp_path))]
        needles = ("r18.ckpt does not fit DeepLabV2", "missing keys", "--config")
    before = _snapshot(tmp_path)
    try:
        result = run_cli_in_process(
            ["export-model", "--ckpt", str(r18_checkpoint), "--output", str(out), *extra], tmp_path
        )
    finally:
        if case == "read_only":
            out.parent.chmod(0o755)
    _assert_one_line_error(result, before, tmp_path, *needles)


def test_export_model_writes_atomically_and_overwrites_when_asked(
    tmp_path: Path, r18_checkpoint: Path
) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")
    command = ["export-model", "--ckpt", str(r18_checkpoint), "--format", "torchscript"]
    result = run_cli_in_process([*command, "--output", str(out), "--overwrite"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.jit.load(str(out)) is not None  # the new export, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left


# --------------------------------------------------------------------------- reproduce


@pytest.mark.parametrize("case", ["out_is_file", "out_holds_other_files", "no_such_root"])
def test_reproduce_refuses_bad_paths_before_creating_anything(tmp_path: Path, case: str) -> None:
    out = tmp_path / "repro"
    args = ["reproduce", "voc", "--output_dir", str(out)]
    if case == "out_is_file":
        out.write_text("not a folder")
        needles: tuple[str, ...] = ("--output_dir", "repro is a file")
    elif case == "out_holds_other_files":
        out.mkdir()
        (out / "results.md").write_text("my notes")
        needles = ("holds other files (results.md)", "--overwrite")
    else:
        args += ["--root", "no_such_root"]
        needles = ("--root no_such_root does not exist",)
    before = _snapshot(tmp_path)
    existing = sorted(tmp_path.rglob("*"))
    result = run_cli_in_process(args, tmp_path)
    _assert_one_line_error(result, before, tmp_path, *needles)
    assert sorted(tmp_path.rglob("*")) == existing  # no_such_root/downloads, repro/logs: none


def test_reproduce_stage_failure_is_one_line(tmp_path: Path) -> None:
    """A stage that fails names its error line and log, in one line."""
    from wsss_pl.reproduce import _last_error

    lines = ["epoch 0\n", "wsss_pl: error: no VOC 2012 under data/x; pass --root\n", "\n"]
    assert _last_error(lines) == "wsss_pl: error: no VOC 2012 under data/x; pass --root"
    assert _last_error(["a\n", "last words\n"]) == "last words"


# --------------------------------------------------------------------------- the repository


def test_repository_names_nothing_outside_itself() -> None:
    """No machine path (sample data comes from $WSSS_PL_SAMPLE_DATA or an argument) and no
    pointer to a design document that is not in the repository."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if name == "tests/test_bad_input.py" or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "/work/" in text or "DESIGN.md" in text:
            offenders.append(name)
    assert not offenders, offenders


def test_diagnosis_does_not_import_evaluation() -> None:
    """One owner for the label-file helpers (wsss_pl.label_files): no import cycle."""
    import ast

    import wsss_pl.diagnosis as diagnosis

    tree = ast.parse(Path(diagnosis.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert "wsss_pl.evaluation" not in imported and "wsss_pl.label_files" in imported


def test_reproduce_score_stage_writes_its_log(tmp_path: Path) -> None:
    """``score`` runs in the reproduce process; its output goes to logs/score.log like the
    other stages' (dry-run data; a cache whose label pass scored 50.0 mIoU and whose labels are
    the ground truth, so train scores 100)."""
    import shutil

    from wsss_pl.reproduce import Reproduction

    out = tmp_path / "repro"
    data = make_synthetic_voc(out / "data", num_train=12, num_val=4, image_size=(96, 128))
    cache = out / "pseudo_labels" / "voc" / "0123456789abcdef"
    (cache / "label_pass").mkdir(parents=True)
    (cache / "manifest.json").write_text("{}")
    (cache / "label_pass" / "quality.json").write_text(json.dumps({"miou": 0.5}))
    for png in (data / "VOC2012" / "SegmentationClass").glob("*.png"):
        shutil.copy(png, cache / png.name)
    Reproduction("voc", out, dry_run=True).run(("score",))
    log = (out / "logs" / "score.log").read_text()
    assert "[reproduce] score" in log and "(12 ids): 100.00 mIoU" in log
    details = json.loads((out / "results.json").read_text())["details"]
    assert details["pseudo_train_aug"] == 50.0 and details["pseudo_train"] == 100.0
