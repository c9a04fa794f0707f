"""A changed library version or environment never silently starts a new, empty cache: the CLI
says, before labelling, which cache it could have used, what differs and how to reuse it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from cli_runner import REPO, run_cli_in_process
from wsss_pl.classes import voc_palette
from wsss_pl.data.synthetic import make_synthetic_voc
from wsss_pl.labeling.online import environment_notice
from wsss_pl.labeling.storage.cache import PseudoLabelCache, changed_entries

pytestmark = pytest.mark.slow

OLD_TRANSFORMERS = "4.99.0"


def _label(
    tmp_path: Path, data: Path, cache_root: Path, subprocess_: bool = False
) -> tuple[int, str]:
    """``wsss_pl label`` of 3 synthetic images with the tiny models of demo_online.yaml: in this
    process, or (``subprocess_``) as a user runs it with stderr and stdout interleaved."""
    args = (
        ["label", "--config", str(REPO / "configs" / "demo_online.yaml"),
         "--data.source.init_args.root", str(data),
         "--data.source.init_args.num_train", "3", "--data.source.init_args.num_val", "1",
         "--data.source.init_args.image_size", "[48, 64]",
         "--data.train_labels.init_args.cache_root", str(cache_root),
         "--data.batch_size", "3", "--data.num_workers", "0",
         "--trainer.logger", "false", "--trainer.accelerator", "cpu"]
    )  # fmt: skip
    if subprocess_:
        env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "wsss_pl", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=300)  # fmt: skip
        return done.returncode, done.stdout
    result = run_cli_in_process(args, tmp_path)
    return result.returncode, result.stdout + result.stderr


def _only_cache_dir(cache_root: Path) -> Path:
    (directory,) = [p.parent for p in cache_root.glob("*/*/manifest.json")]
    return directory


def _rehome(directory: Path, settings: dict) -> Path:
    """Move the labels of ``directory`` into the cache directory that ``settings`` name."""
    other = PseudoLabelCache(
        directory.parent.parent, directory.parent.name, settings, voc_palette()
    )
    other.open()
    for path in directory.iterdir():
        if path.suffix in (".png", ".json") and path.name != "manifest.json":
            shutil.move(str(path), other.directory / path.name)
    shutil.rmtree(directory)
    return other.directory


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    """A cache made by the CLI: (work dir, data root, cache root, its settings)."""
    tmp_path = tmp_path_factory.mktemp("env")
    data = make_synthetic_voc(tmp_path / "voc", num_train=3, num_val=1, image_size=(48, 64))
    cache_root = tmp_path / "cache"
    code, output = _label(tmp_path, data, cache_root)
    assert code == 0, output
    assert "pseudo-label cache:" not in output  # nothing to reuse on a first run
    directory = _only_cache_dir(cache_root)
    assert len(list(directory.glob("*.png"))) == 3
    settings = json.loads((directory / "manifest.json").read_text())["settings"]
    return tmp_path, data, cache_root, settings


def test_new_library_version_names_the_old_cache_before_labelling(labelled, tmp_path) -> None:
    work, data, _, settings = labelled
    cache_root = tmp_path / "cache"
    shutil.copytree(_only_cache_dir(labelled[2]).parent.parent, cache_root)
    old_settings = json.loads(json.dumps(settings))
    old_settings["environment"]["transformers"] = OLD_TRANSFORMERS
    old_dir = _rehome(_only_cache_dir(cache_root), old_settings)

    code, output = _label(work, data, cache_root, subprocess_=True)
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.startswith("pseudo-label cache:")]
    assert len(lines) == 1, output
    notice = lines[0]
    assert str(old_dir) in notice and "holds 3 labels" in notice
    assert f"transformers {OLD_TRANSFORMERS} -> {transformers.__version__}" in notice
    assert f"pip install 'transformers=={OLD_TRANSFORMERS}'" in notice
    new_dir = [p for p in _only_parent(cache_root).iterdir() if p != old_dir]
    assert len(new_dir) == 1 and str(new_dir[0]) in notice
    # Said before labelling: the notice precedes the label pass's own report.
    assert output.index(notice) < output.index("labelled")
    # The old labels are left as they were; a rerun in this environment has nothing to say.
    assert len(list(old_dir.glob("*.png"))) == 3
    code, output = _label(work, data, cache_root)
    assert code == 0 and "pseudo-label cache:" not in output, output


def _only_parent(cache_root: Path) -> Path:
    (dataset_dir,) = [p for p in cache_root.iterdir() if p.is_dir()]
    return dataset_dir


def test_other_thread_count_suggests_the_option(labelled, tmp_path) -> None:
    _, _, source_root, settings = labelled
    cache_root = tmp_path / "cache"
    shutil.copytree(source_root, cache_root)
    old_settings = json.loads(json.dumps(settings))
    old_settings["environment"]["cpu_threads"] = settings["environment"]["cpu_threads"] + 3
    _rehome(_only_cache_dir(cache_root), old_settings)
    cache = PseudoLabelCache(cache_root, _only_parent(cache_root).name, settings, voc_palette())
    notice = environment_notice(cache)
    assert notice is not None
    threads = old_settings["environment"]["cpu_threads"]
    assert f"--data.train_labels.init_args.cpu_threads {threads}" in notice


def test_other_settings_are_no_environment_change(labelled, tmp_path) -> None:
    """A sibling made with another threshold is a config change: no notice (and the same
    sibling with only the environment changed does give one, so this can fail)."""
    _, _, source_root, settings = labelled
    cache_root = tmp_path / "cache"
    shutil.copytree(source_root, cache_root)
    old_settings = json.loads(json.dumps(settings))
    old_settings["environment"]["torch"] = "0.0.1"
    old_settings["box_threshold"] = 0.5
    _rehome(_only_cache_dir(cache_root), old_settings)
    name = _only_parent(cache_root).name
    assert environment_notice(PseudoLabelCache(cache_root, name, settings, voc_palette())) is None
    old_settings["box_threshold"] = settings["box_threshold"]
    _rehome(_only_cache_dir(cache_root), old_settings)
    notice = environment_notice(PseudoLabelCache(cache_root, name, settings, voc_palette()))
    assert notice is not None and "torch 0.0.1 -> " in notice


def test_changed_entries_lists_dotted_keys() -> None:
    assert changed_entries({"a": 1, "b": {"c": "x"}}, {"a": 1, "b": {"c": "y"}, "d": 2}) == [
        "b.c x -> y",
        "d None -> 2",
    ]
