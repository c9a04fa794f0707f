"""download_file / extract_archive against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_server import LocalServer, free_port, serve_directory
from wsss_pl.archive import EXTRACTED_MARKER, extract_archive, is_extracted
from wsss_pl.download import (
    download_file,
    file_digests,
    file_sha256,
    read_sha256_sidecar,
)
from wsss_pl.errors import CorruptFileError, DataError, WeightsError

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10 KiB, not a multiple of any chunk size
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with serve_directory(tmp_path / "www") as running:
        yield running


def _publish(server: LocalServer, name: str = "files/blob.bin", data: bytes = PAYLOAD) -> str:
    path = server.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return server.url(name)


def _gets(server: LocalServer) -> list[tuple[str | None, int]]:
    return [(request.range, request.status) for request in server.requests]


def test_download_with_checksums(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "out" / "blob.bin"
    result = download_file(url, target, sha256=SHA256, md5=MD5, sha256_prefix=SHA256[:8])
    assert result == target
    assert target.read_bytes() == PAYLOAD
    assert not target.with_name("blob.bin.part").exists()
    assert not target.with_name("blob.bin.lock").exists()
    assert read_sha256_sidecar(target) == SHA256  # recorded, so it is never hashed again
    assert _gets(server) == [(None, 200)]


def test_existing_verified_file_is_not_downloaded_again(
    server: LocalServer, tmp_path: Path
) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    target.write_bytes(PAYLOAD)
    assert download_file(url, target, sha256=SHA256, progress=False) == target
    assert server.requests == []


def test_existing_wrong_file_is_replaced(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    target.write_bytes(b"an older version")
    download_file(url, target, md5=MD5, progress=False)
    assert target.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    wrong = "0" * 64
    with pytest.raises(DataError) as caught:
        download_file(url, target, sha256=wrong, progress=False, error_type=DataError)
    message = str(caught.value)
    for fragment in (url, "blob.bin", wrong, SHA256, str(target)):
        assert fragment in message
    assert not target.exists()
    assert not target.with_name("blob.bin.part").exists()


def test_resume_sends_range_and_completes(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.part").write_bytes(PAYLOAD[:4000])
    download_file(url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert _gets(server) == [("bytes=4000-", 206)]


def test_dropped_connection_keeps_part_and_next_run_resumes(
    server: LocalServer, tmp_path: Path
) -> None:
    url = _publish(server)
    server.drop_after["files/blob.bin"] = 3000
    target = tmp_path / "blob.bin"
    part = target.with_name("blob.bin.part")
    with pytest.raises(WeightsError, match="resumes"):
        download_file(url, target, sha256=SHA256, progress=False, error_type=WeightsError)
    assert part.stat().st_size == 3000
    assert not target.exists()
    download_file(url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert _gets(server)[-1] == ("bytes=3000-", 206)


def test_server_without_ranges_restarts(tmp_path: Path) -> None:
    with serve_directory(tmp_path / "www", ranges=False) as server:
        url = _publish(server)
        target = tmp_path / "blob.bin"
        target.with_name("blob.bin.part").write_bytes(PAYLOAD[:4000])
        download_file(url, target, sha256=SHA256, progress=False)
        assert target.read_bytes() == PAYLOAD
        assert _gets(server) == [("bytes=4000-", 200)]


def test_corrupt_part_is_redownloaded_from_scratch(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.part").write_bytes(b"x" * 4000)  # wrong bytes: resume can't fix it
    download_file(url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert _gets(server) == [("bytes=4000-", 206), (None, 200)]


def test_complete_part_is_verified_after_416(server: LocalServer, tmp_path: Path) -> None:
    url = _publish(server)
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.part").write_bytes(PAYLOAD)
    download_file(url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert _gets(server) == [(f"bytes={len(PAYLOAD)}-", 416)]


def test_server_down_names_file_url_and_destination(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/models/net.pth"
    target = tmp_path / "cache" / "net.pth"
    with pytest.raises(WeightsError) as caught:
        download_file(
            url, target, sha256=SHA256, progress=False, timeout=5, error_type=WeightsError
        )
    message = str(caught.value)
    assert "net.pth" in message
    assert url in message
    assert str(target) in message
    assert "download on a machine" in message
    assert "put the file at exactly" in message
    assert not target.exists()


def test_unreachable_mirror_falls_back(server: LocalServer, tmp_path: Path) -> None:
    good = _publish(server)
    missing = server.url("nowhere/blob.bin")  # 404
    down = f"http://127.0.0.1:{free_port()}/blob.bin"
    target = tmp_path / "blob.bin"
    download_file([down, missing, good], target, md5=MD5, progress=False, timeout=5)
    assert target.read_bytes() == PAYLOAD


def test_file_hashes_and_stale_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert file_sha256(path) == SHA256
    assert file_digests(path, ["md5", "sha256"]) == {"md5": MD5, "sha256": SHA256}
    assert read_sha256_sidecar(path) is None
    path.with_name("f.bin.sha256").write_text(
        f'{{"sha256": "{SHA256}", "size": {len(PAYLOAD)}, "mtime_ns": {path.stat().st_mtime_ns}}}'
    )
    assert read_sha256_sidecar(path) == SHA256
    os.utime(path, ns=(0, 0))  # the file changed since: the record no longer applies
    assert read_sha256_sidecar(path) is None


# ------------------------------------------------------------------------------------ archives


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_extract_tar_strips_root_and_filters(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "a.tgz",
        {
            "bundle/data/cls/1.mat": b"one",
            "bundle/data/img/1.jpg": b"big",
            "bundle/data/train.txt": b"1\n",
            "bundle/README": b"skip",
        },
    )
    destination = tmp_path / "out"
    extract_archive(
        archive,
        destination,
        member_root="bundle/data",
        include=lambda rel: rel.startswith("cls/") or rel == "train.txt",
    )
    files = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert files == sorted([EXTRACTED_MARKER, "cls/1.mat", "train.txt"])
    assert (destination / "cls/1.mat").read_bytes() == b"one"
    assert is_extracted(destination)
    archive.unlink()  # a completed destination never reopens the archive
    extract_archive(archive, destination)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_extract_zip(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("val2014/", b"")
        zipped.writestr("val2014/COCO_val2014_000000000042.jpg", b"jpeg")
    extract_archive(archive, tmp_path / "val2014", member_root="val2014")
    assert (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").read_bytes() == b"jpeg"


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "bad.tar", {"ok/fine.txt": b"fine", name: b"evil"}, mode="w")
    destination = tmp_path / "sub" / "out"
    with pytest.raises(DataError, match="unsafe member"):
        extract_archive(archive, destination)
    assert not destination.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "evil.txt").exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no staging directory left behind


def test_extract_refuses_zip_traversal_and_links(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../escape.txt", b"evil")
    with pytest.raises(DataError, match="unsafe member"):
        extract_archive(archive, tmp_path / "out")
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as tarred:
        info = tarfile.TarInfo("data/passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tarred.addfile(info)
    with pytest.raises(DataError, match="link"):
        extract_archive(linked, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interrupted_extraction_leaves_no_tree(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", {f"d/{i}.txt": b"x" for i in range(5)})
    destination = tmp_path / "out"

    def die_on_third(relative: str) -> bool:
        if relative == "3.txt":
            raise KeyboardInterrupt  # as if the process were killed mid-way
        return True

    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, destination, member_root="d", include=die_on_third)
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.tgz"]
    extract_archive(archive, destination, member_root="d")
    assert len(list(destination.glob("*.txt"))) == 5


def test_extract_refuses_foreign_destination_and_corrupt_archive(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", {"x.txt": b"x"})
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="not a completed extraction"):
        extract_archive(archive, destination)
    assert (destination / "mine.txt").read_text() == "user data"
    truncated = tmp_path / "t.tgz"
    truncated.write_bytes(archive.read_bytes()[:30])
    with pytest.raises(CorruptFileError):
        extract_archive(truncated, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_concurrent_downloads_of_one_file_fetch_it_once(
    server: LocalServer, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = _publish(server, data=PAYLOAD * 50)  # 500 KiB: long enough for the others to queue
    target = tmp_path / "shared" / "blob.bin"
    with ThreadPoolExecutor(4) as pool:  # like DDP ranks resolving the same checkpoint
        results = list(
            pool.map(
                lambda _: download_file(
                    url, target, md5=hashlib.md5(PAYLOAD * 50).hexdigest(), progress=False
                ),
                range(4),
            )
        )
    assert results == [target] * 4
    assert target.read_bytes() == PAYLOAD * 50
    assert _gets(server) == [(None, 200)]
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin", "blob.bin.sha256"]
