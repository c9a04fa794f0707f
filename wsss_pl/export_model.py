"""``python -m wsss_pl export-model``: a trained segmenter as one ONNX or TorchScript file.

The exported graph takes what a deployment has, a uint8 RGB image batch [B, 3, H, W] of any size,
and does the rest inside: scaling to [0, 1], the training normalisation (mean/std of the config),
the network, bilinear upsampling of the logits to the input size, and (``--output_type labels``) the
arg-max as a uint8 class map [B, H, W]. ``--verify`` runs the exported file (onnxruntime or
torch.jit) against PyTorch on real images and prints the largest logit difference, the pixels
whose arg-max differs, and the CPU latency of both.

    python -m wsss_pl export-model --ckpt runs/voc/last.ckpt --config configs/voc.yaml \\
        --format onnx --output model.onnx --verify data/VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_pl.errors import DataError, WeightsError, WsssError
from wsss_pl.io import check_output_file, make_temp, write_json
from wsss_pl.options import CommandParser

Output = Literal["logits", "labels"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeployableSegmenter(nn.Module):
    """A segmentation net with its input convention inside.

    Args:
        net: float normalised [B, 3, H, W] -> logits [B, K, h, w] (any stride).
        mean, std: per-channel normalisation of images scaled to [0, 1] (as in training).
        output: ``logits`` -> float32 [B, K, H, W]; ``labels`` -> uint8 [B, H, W] arg-max.

    Input: uint8 [B, 3, H, W] RGB.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        output: Output = "logits",
    ) -> None:
        super().__init__()
        if output not in ("logits", "labels"):
            raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
        self.net = net.eval()
        self.output = output
        # Folded: (x / 255 - mean) / std = x * scale + shift, one multiply-add in the graph.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / std_t)

    def forward(self, image: Tensor) -> Tensor:
        x = image.float() * self.scale + self.shift
        logits = self.net(x)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if self.output == "labels":
            return logits.argmax(dim=1).to(torch.uint8)
        return logits


# --- building the net from a checkpoint -----------------------------------------------------
def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise DataError(f"cannot import model.net class_path {class_path!r}: {error}") from error


def _net_state(ckpt: Path) -> dict[str, Tensor]:
    from wsss_pl.weights import load_state_dict

    state = load_state_dict(ckpt)  # weights_only; Lightning's "state_dict" is unwrapped
    net = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    return net or dict(state)


def _infer_deeplab(state: dict[str, Tensor]) -> dict[str, Any]:
    """DeepLabV2 init_args read off a state dict (rates and output stride are not stored)."""
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    bottleneck = any(k.startswith("backbone.layer1.0.conv3.") for k in state)
    depth = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}.get(
        (len(blocks), bottleneck), "resnet101"
    )
    convs = sorted({k for k in state if k.startswith("classifier.convs.") and k.endswith("weight")})
    if not convs:
        raise WeightsError("checkpoint has no classifier.convs.*: not a DeepLabV2; pass --config")
    rates = (6, 12, 18, 24)[: len(convs)]
    return {"num_classes": int(state[convs[0]].shape[0]), "backbone": depth, "atrous_rates": rates}


def _conventions_from_state(cls: Any, init_args: dict[str, Any], state: dict[str, Tensor]) -> None:
    """DeepLabV2 keeps its backbone style / input convention as buffers; "auto" resolves from the
    pretrained file, which is not loaded here, so take them from the trained weights instead."""
    import inspect

    parameters = inspect.signature(cls).parameters
    for key, buffer, values in (
        ("backbone_style", "caffe_backbone", ("torchvision", "caffe")),
        ("input_convention", "caffe_input", ("imagenet_rgb", "caffe_bgr")),
    ):
        if key in parameters and buffer in state and init_args.get(key, "auto") == "auto":
            init_args[key] = values[int(state[buffer])]


def load_net(
    ckpt: str | Path, config: str | Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained net of a Lightning checkpoint and the data settings (mean/std) of its config.

    With ``config`` (the training YAML or the run's saved ``run_config.yaml``) the net is built
    from ``model.net``; without it a DeepLabV2 is inferred from the weights (output stride 8 and
    rates 6/12/18/24 assumed: pass the config when they differ).
    """
    import yaml

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} does not exist (--ckpt)")
    state = _net_state(ckpt)
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise DataError(f"config {path} does not exist (--config)")
        content = yaml.safe_load(path.read_text()) or {}
        if "fit" in content and "model" not in content:  # a saved run_config of `fit`
            content = content["fit"]
        spec = (content.get("model") or {}).get("net")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise DataError(f"{path}: no model.net.class_path to build the network from")
        init_args = dict(spec.get("init_args") or {})
        data = dict(content.get("data") or {})
        cls = _import(spec["class_path"])
    else:
        from wsss_pl.models.deeplab_v2 import DeepLabV2

        cls, init_args = DeepLabV2, _infer_deeplab(state)
    if "pretrained" in init_args or cls.__name__ == "DeepLabV2":
        init_args["pretrained"] = None  # the checkpoint holds the trained weights
    _conventions_from_state(cls, init_args, state)
    if "freeze_bn" in init_args:
        init_args["freeze_bn"] = False  # eval() fixes BatchNorm anyway; avoids a warning
    net = cls(**init_args)
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected or _shape_mismatch(net, state):
        # one line: torch's own message lists every key, one per line
        what = "; ".join(
            f"{len(keys)} {kind} keys (first: {keys[0]})"
            for kind, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong-shape", _shape_mismatch(net, state)),
            )
            if keys
        )
        raise WeightsError(
            f"{ckpt} does not fit {cls.__name__}({init_args}): {what}; "
            "pass the config it was trained with (--config)"
        )
    net.load_state_dict(state)
    return net.eval(), data


def _key_mismatch(net: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """(keys the net needs that ``state`` lacks, keys of ``state`` the net does not have)."""
    own = net.state_dict()
    return sorted(set(own) - set(state)), sorted(set(state) - set(own))


def _shape_mismatch(net: nn.Module, state: dict[str, Tensor]) -> list[str]:
    own = net.state_dict()
    return sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)


# --- export ---------------------------------------------------------------------------------
def export(
    model: DeployableSegmenter, path: str | Path, fmt: Literal["onnx", "torchscript"]
) -> Path:
    """Write ``model`` with dynamic batch and image size, atomically (a temp file beside
    ``path``, renamed over it once complete); returns the path."""
    path = Path(path)
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = make_temp(path.parent, path.name)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from error
    os.close(fd)
    try:
        _export_to(model, Path(temp_name), fmt)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _export_to(model: DeployableSegmenter, path: Path, fmt: str) -> None:
    example = torch.randint(0, 256, (1, 3, 97, 131), dtype=torch.uint8)
    model = model.eval()
    if fmt == "onnx":
        name = "logits" if model.output == "logits" else "labels"
        axes = (
            {0: "batch", 2: "height", 3: "width"}
            if name == "logits"
            else {0: "batch", 1: "height", 2: "width"}
        )
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=[name],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, name: axes},
                opset_version=17,
                dynamo=False,
            )
    elif fmt == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(model, (example,), check_trace=False)
        scripted.save(str(path))


class _Runner:
    """Runs an exported file on uint8 [1, 3, H, W] numpy arrays."""

    def __init__(self, path: Path, fmt: str, threads: int) -> None:
        if fmt == "onnx":
            try:
                import onnxruntime as ort
            except ImportError as error:
                raise WsssError(
                    "verifying an ONNX export needs onnxruntime: pip install 'wsss_pl[deploy]'"
                ) from error
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.run = lambda x: session.run(None, {"image": x})[0]
        else:
            module = torch.jit.load(str(path), map_location="cpu")
            self.run = lambda x: _no_grad(module, x)


def _no_grad(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _time(fn: Any, x: Any, repeats: int) -> float:
    fn(x)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1000


def verify(
    model: DeployableSegmenter,
    path: Path,
    fmt: str,
    images: Sequence[str | Path],
    repeats: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """Compare the exported file with PyTorch on ``images``: logits (or labels) and latency.

    Returns per image and overall: ``max_abs_logit_diff`` (logits output), ``argmax_diff_pixels``
    (pixels whose class differs), ``torch_ms`` / ``exported_ms`` (mean CPU latency, ``threads``
    threads, after one warm-up run).
    """
    from wsss_pl.io import read_image

    torch.set_num_threads(threads)
    runner = _Runner(path, fmt, threads)
    rows = []
    for image_path in images:
        image = read_image(Path(image_path))[None]  # uint8 [1, 3, H, W]
        with torch.no_grad():
            reference = model(image).numpy()
            torch_ms = _time(lambda x: model(x), image, repeats)
        got = runner.run(image.numpy())
        exported_ms = _time(runner.run, image.numpy(), repeats)
        if got.shape != reference.shape:
            raise WsssError(f"{path}: output {got.shape} but PyTorch gives {reference.shape}")
        row: dict[str, Any] = {"image": str(image_path), "size": list(image.shape[-2:])}
        if model.output == "logits":
            row["max_abs_logit_diff"] = float(np.abs(got - reference).max())
            got_labels, ref_labels = got.argmax(1), reference.argmax(1)
        else:
            got_labels, ref_labels = got, reference
        row["argmax_diff_pixels"] = int((got_labels != ref_labels).sum())
        row["pixels"] = int(ref_labels.size)
        row["torch_ms"] = round(torch_ms, 2)
        row["exported_ms"] = round(exported_ms, 2)
        rows.append(row)
    summary = {
        "format": fmt,
        "threads": threads,
        "images": rows,
        "argmax_diff_pixels": sum(r["argmax_diff_pixels"] for r in rows),
        "torch_ms_mean": round(float(np.mean([r["torch_ms"] for r in rows])), 2),
        "exported_ms_mean": round(float(np.mean([r["exported_ms"] for r in rows])), 2),
    }
    if model.output == "logits":
        summary["max_abs_logit_diff"] = max(r["max_abs_logit_diff"] for r in rows)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{'image':<40} {'HxW':>9} {'max|dlogit|':>12} {'argmax diff':>12} "
        f"{'torch ms':>9} {summary['format'] + ' ms':>14}"
    ]
    for r in summary["images"]:
        diff = f"{r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else "-"
        lines.append(
            f"{Path(r['image']).name:<40} {r['size'][0]:>4}x{r['size'][1]:<4} {diff:>12} "
            f"{r['argmax_diff_pixels']:>5}/{r['pixels']:<6} {r['torch_ms']:>9.1f} "
            f"{r['exported_ms']:>14.1f}"
        )
    lines.append(
        f"CPU latency ({summary['threads']} thread(s)): PyTorch {summary['torch_ms_mean']:.1f} ms, "
        f"{summary['format']} {summary['exported_ms_mean']:.1f} ms per image (mean)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="wsss_pl export-model",
        renamed={"--out": "--output"},
        description="Export a trained segmenter (uint8 image in, logits or class map out).",
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="Lightning checkpoint (.ckpt)")
    parser.add_argument(
        "--config", type=Path, help="training config or run_config.yaml (default: infer DeepLabV2)"
    )
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument(
        "--output", type=Path, help="file to write (default: next to the checkpoint)"
    )
    parser.add_argument(
        "--output_type",
        choices=("logits", "labels"),
        default="logits",
        help="what the exported graph returns: float logits [B,C,H,W] or uint8 labels [B,H,W]",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (else an error)"
    )
    parser.add_argument("--verify", nargs="*", default=[], help="images to check the export on")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the timing")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.output is not None and str(args.output) in ("logits", "labels"):
            parser.error(
                f"--output is the file to write; for what the graph returns use --output_type "
                f"{args.output}"
            )
    except SystemExit as exit_:
        return int(exit_.code or 0)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = args.output or args.ckpt.with_suffix(suffix)
    try:
        check_output_file(out, args.overwrite, "--output")
        net, data = load_net(args.ckpt, args.config)
        model = DeployableSegmenter(
            net,
            mean=data.get("mean", IMAGENET_MEAN),
            std=data.get("std", IMAGENET_STD),
            output=args.output_type,
        )
        export(model, out, args.format)
        print(
            f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): uint8 [B,3,H,W] -> {args.output_type}"
        )
        if args.verify:
            missing = [p for p in args.verify if not Path(p).is_file()]
            if missing:
                raise DataError(f"--verify image(s) not found: {missing}")
            summary = verify(model, out, args.format, args.verify, args.repeats, args.threads)
            print(format_summary(summary))
            report = out.with_name(out.name + ".verify.json")
            write_json(report, summary)
            print(f"verification: {report}")
    except WsssError as error:
        print(f"wsss_pl: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
