"""Checkpoint registry, cache resolution, hub models and weights_only loading."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from http_server import LocalServer, free_port, serve_directory
from wsss_pl import weights
from wsss_pl.errors import WeightsError
from wsss_pl.weights import (
    CHECKPOINTS,
    HUB_MODELS,
    Checkpoint,
    checkpoint_fingerprint,
    load_state_dict,
    resolve_checkpoint,
    resolve_hub_model,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with serve_directory(tmp_path / "www") as running:
        yield running


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()


def _saved(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_registry_entries_are_complete() -> None:
    for name in ("sam_vit_h", "sam_vit_l", "sam_vit_b", "resnet101_imagenet", "resnet50_imagenet"):
        checkpoint = CHECKPOINTS[name]
        assert checkpoint.url.endswith("/" + checkpoint.filename)
        assert checkpoint.url.startswith("https://")
    assert (
        CHECKPOINTS["sam_vit_h"].sha256 is not None and len(CHECKPOINTS["sam_vit_h"].sha256) == 64
    )
    # torchvision embeds the sha256 prefix in the file name
    resnet = CHECKPOINTS["resnet101_imagenet"]
    assert resnet.sha256_prefix is not None and resnet.sha256_prefix in resnet.filename
    assert HUB_MODELS["grounding-dino-tiny"].repo_id == "IDEA-Research/grounding-dino-tiny"
    with pytest.raises(ValueError):
        Checkpoint(name="x", url="u", filename="f")


def test_resolve_existing_path_is_used_as_is(tmp_path: Path) -> None:
    path = _saved(tmp_path / "mine.pth", _tiny_state())
    assert resolve_checkpoint(str(path), cache_dir=tmp_path / "cache", download=False) == path


def test_resolve_name_from_cache_without_network(tmp_path: Path, monkeypatch) -> None:
    payload = b"pretend checkpoint"
    entry = dataclasses.replace(
        CHECKPOINTS["sam_vit_b"],
        url=f"http://127.0.0.1:{free_port()}/sam_vit_b_01ec64.pth",  # nothing listens here
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(CHECKPOINTS, "sam_vit_b", entry)
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(payload)
    assert resolve_checkpoint("sam_vit_b", cache_dir=tmp_path) == tmp_path / "sam_vit_b_01ec64.pth"


def test_resolve_uses_env_cache(tmp_path: Path, monkeypatch) -> None:
    payload = b"prefix-checked"
    entry = dataclasses.replace(
        CHECKPOINTS["resnet101_imagenet"], sha256_prefix=hashlib.sha256(payload).hexdigest()[:8]
    )
    monkeypatch.setitem(CHECKPOINTS, "resnet101_imagenet", entry)
    monkeypatch.setenv("WSSS_PL_CACHE", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / entry.filename).write_bytes(payload)
    assert resolve_checkpoint("resnet101_imagenet", download=False).read_bytes() == payload


def test_resolve_downloads_into_cache(server: LocalServer, tmp_path: Path, monkeypatch) -> None:
    payload = io.BytesIO()
    torch.save(_tiny_state(), payload)
    (server.root / "sam_vit_b_01ec64.pth").write_bytes(payload.getvalue())
    entry = dataclasses.replace(
        CHECKPOINTS["sam_vit_b"],
        url=server.url("sam_vit_b_01ec64.pth"),
        sha256=hashlib.sha256(payload.getvalue()).hexdigest(),
    )
    monkeypatch.setitem(CHECKPOINTS, "sam_vit_b", entry)
    cache = tmp_path / "cache"
    path = resolve_checkpoint("sam_vit_b", cache_dir=cache)
    assert path == cache / "sam_vit_b_01ec64.pth"
    assert set(load_state_dict(path)) == set(_tiny_state())
    assert checkpoint_fingerprint(path) == entry.sha256
    assert len(server.requests) == 1
    resolve_checkpoint("sam_vit_b", cache_dir=cache)  # second call: cache hit, no request
    assert len(server.requests) == 1


def test_resolve_offline_and_damaged_messages(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("sam_vit_h", cache_dir=tmp_path, download=False)
    message = str(caught.value)
    assert CHECKPOINTS["sam_vit_h"].url in message
    assert str(tmp_path / "sam_vit_h_4b8939.pth") in message
    (tmp_path / "sam_vit_h_4b8939.pth").write_bytes(b"not SAM")
    with pytest.raises(WeightsError, match="damaged or a different version"):
        resolve_checkpoint("sam_vit_h", cache_dir=tmp_path, download=False)


def test_resolve_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("sam_vit_giant", cache_dir=tmp_path)
    for name in CHECKPOINTS:
        assert name in str(caught.value)


def test_fingerprint_is_memoised_and_recorded(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()
    calls: list[Path] = []
    real = weights.file_sha256

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(weights, "file_sha256", counting)
    monkeypatch.setattr(weights, "_FINGERPRINTS", {})
    assert checkpoint_fingerprint(path) == expected
    assert checkpoint_fingerprint(path) == expected
    assert len(calls) == 1
    assert (tmp_path / "w.pth.sha256").is_file()
    monkeypatch.setattr(weights, "_FINGERPRINTS", {})  # a new process: the sidecar answers
    assert checkpoint_fingerprint(path) == expected
    assert len(calls) == 1
    path.write_bytes(b"changed")  # size/mtime change: hashed again
    assert checkpoint_fingerprint(path) == hashlib.sha256(b"changed").hexdigest()
    assert len(calls) == 2


def test_load_state_dict_unwraps_containers(tmp_path: Path) -> None:
    state = _tiny_state()
    plain = load_state_dict(_saved(tmp_path / "plain.pth", state))
    assert plain.keys() == state.keys()
    assert all(torch.equal(plain[k], state[k]) for k in state)
    lightning_like = {"epoch": 3, "state_dict": state, "optimizer_states": [{"lr": 0.1}]}
    assert load_state_dict(_saved(tmp_path / "wrapped.ckpt", lightning_like)).keys() == state.keys()
    ddp = {"model": {f"module.{k}": v for k, v in state.items()}}
    assert load_state_dict(_saved(tmp_path / "ddp.pth", ddp)).keys() == state.keys()
    nested = {"ema": {"weights": state}, "other": {"x": torch.zeros(1)}}
    assert (
        load_state_dict(_saved(tmp_path / "k.pth", nested), key="ema.weights").keys()
        == state.keys()
    )
    with pytest.raises(WeightsError, match="no entry 'missing'"):
        load_state_dict(tmp_path / "k.pth", key="missing")


def test_load_state_dict_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _tiny_state().items()}
    save_file(state, str(tmp_path / "m.safetensors"))
    assert load_state_dict(tmp_path / "m.safetensors").keys() == state.keys()


def test_load_state_dict_bad_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(tmp_path / "absent.pth")
    good = _saved(tmp_path / "good.pth", _tiny_state()).read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="truncated") as caught:
        load_state_dict(truncated)
    assert str(truncated) in str(caught.value)
    evil = _saved(tmp_path / "evil.pth", {"state_dict": _tiny_state(), "hook": ArbitraryObject()})
    with pytest.raises(WeightsError, match="weights_only") as caught:
        load_state_dict(evil)
    assert str(evil) in str(caught.value)
    with pytest.raises(WeightsError, match="does not look like a state dict"):
        load_state_dict(_saved(tmp_path / "list.pth", {"numbers": [1, 2, 3]}))


class ArbitraryObject:
    """Not on torch's weights_only allow-list: loading it would need to run pickled code."""


def test_resolve_hub_model_local_dir(tmp_path: Path) -> None:
    (tmp_path / "gdino").mkdir()
    (tmp_path / "gdino" / "config.json").write_text("{}")
    assert resolve_hub_model(str(tmp_path / "gdino")) == str(tmp_path / "gdino")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        resolve_hub_model(str(tmp_path / "empty"))


def test_resolve_hub_model_offline_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WSSS_PL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WSSS_PL_DEBUG", raising=False)
    with pytest.raises(WeightsError) as caught:
        resolve_hub_model("grounding-dino-tiny", cache_dir=tmp_path / "hub")
    message = str(caught.value)
    folder = tmp_path / "cache" / "hub" / "grounding-dino-tiny"  # where `fetch` puts it
    assert f"hf download IDEA-Research/grounding-dino-tiny --local-dir {folder}" in message
    assert "\n" not in message and len(message) < 450
    assert "LocalEntryNotFoundError" not in message  # the library's text: WSSS_PL_DEBUG=1 only
    monkeypatch.setenv("WSSS_PL_DEBUG", "1")
    with pytest.raises(WeightsError, match="LocalEntryNotFoundError"):
        resolve_hub_model("grounding-dino-tiny", cache_dir=tmp_path / "hub")
    with pytest.raises(WeightsError, match="unknown hub model"):
        resolve_hub_model("not-a-model")


def test_resolve_hub_model_from_offline_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--IDEA-Research--grounding-dino-tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in HUB_MODELS["grounding-dino-tiny"].required_files[:-1]:
        (snapshot / name).write_text("{}")
    with pytest.raises(WeightsError, match="lacks vocab.txt"):
        resolve_hub_model("IDEA-Research/grounding-dino-tiny", cache_dir=tmp_path / "hub")
    (snapshot / "vocab.txt").write_text("[PAD]\n")
    assert resolve_hub_model("grounding-dino-tiny", cache_dir=tmp_path / "hub") == str(snapshot)


def test_caffemodel_member_of_a_zip_is_downloaded_and_extracted(
    server: LocalServer, tmp_path: Path, monkeypatch
) -> None:
    import zipfile

    assert CHECKPOINTS["deeplabv2_coco_init"].archive_member == "init.caffemodel"
    assert CHECKPOINTS["deeplabv2_coco_init"].url.endswith("/prototxt_and_model.zip")
    member = b"\x00caffemodel bytes" * 1000
    server.root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(server.root / "prototxt_and_model.zip", "w") as zipped:
        zipped.writestr("train.prototxt", "layer {}")
        zipped.writestr("init.caffemodel", member)
    entry = dataclasses.replace(
        CHECKPOINTS["deeplabv2_coco_init"], url=server.url("prototxt_and_model.zip")
    )
    monkeypatch.setitem(CHECKPOINTS, "deeplabv2_coco_init", entry)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="extract init.caffemodel"):
        resolve_checkpoint("deeplabv2_coco_init", cache_dir=cache, download=False)
    path = resolve_checkpoint("deeplabv2_coco_init", cache_dir=cache)
    assert path == cache / entry.filename and path.read_bytes() == member
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".sha256"]
    resolve_checkpoint("deeplabv2_coco_init", cache_dir=cache)  # cached: no second request
    assert len(server.requests) == 1

    bad = dataclasses.replace(entry, archive_member="missing.caffemodel", filename="other")
    monkeypatch.setitem(CHECKPOINTS, "deeplabv2_coco_init", bad)
    with pytest.raises(WeightsError, match="no member 'missing.caffemodel'"):
        resolve_checkpoint("deeplabv2_coco_init", cache_dir=cache)
    with pytest.raises(ValueError, match="unverified"):
        Checkpoint(name="x", url="u", filename="f", sha256="0" * 64, unverified="why")
