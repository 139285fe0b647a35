"""What a run trains on is what its record says: the packed cache is verified before any use.

Each test damages a private copy of a tiny prepared synthetic set (3 classes x (4 train + 2 test)) and
checks that loading it is refused with one line naming the file at fault and the command that rebuilds
it, and that nothing on disk was touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SET as TINY

from archbench.data import packed as packing
from archbench.data import resolve, synthetic, tinyimagenet
from archbench.data.packed import FORMAT_VERSION
from archbench.data.synthetic import LAYOUT_DIR, wnid
from archbench.data.tinyimagenet import ARRAYS, PACKED_DIR, check_cache, load_packed, prepare
from archbench.errors import ArchbenchError


@pytest.fixture
def root(tiny_root, tmp_path) -> Path:
    """A private copy of the prepared set (layout and packed cache), for tests that damage it. The source
    is recorded relative to the root, so the copy rebuilds from its own layout."""
    return Path(shutil.copytree(tiny_root, tmp_path / "root"))


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def _refused(root: Path) -> str:
    """The one-line message with which `load_packed` refuses ``root``; loading changes nothing on disk."""
    before = _snapshot(root)
    with pytest.raises(ArchbenchError) as info:
        load_packed(root)
    assert _snapshot(root) == before
    message = info.value.message
    assert "\n" not in message and str(info.value) == message
    assert f"archbench data prepare --root {root}`" in message
    return message


def _flip_byte(path: Path, offset: int = -1) -> None:
    content = bytearray(path.read_bytes())
    content[offset] ^= 0x01
    path.write_bytes(bytes(content))


def _edit_manifest(packed: Path, old: str, new: str) -> None:
    path = packed / "manifest.json"
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def _change_one_character(packed: Path, after: str, prefix: str) -> None:
    """Change the character that follows ``prefix`` (searched from ``after``) in manifest.json: a digit
    to the next digit, a letter to the other case."""
    path = packed / "manifest.json"
    text = path.read_text()
    at = text.index(prefix, text.index(after)) + len(prefix)
    old = text[at]
    new = str((int(old) + 1) % 10) if old.isdigit() else old.swapcase()
    path.write_text(text[:at] + new + text[at + 1 :])


def _rewrite(packed: Path, arrays: dict[str, np.ndarray], **changes) -> None:
    """Replace arrays and give the manifest matching sizes, checksums and fingerprint, as a packer that
    was wrong about its labels would: the checksums alone cannot catch it."""
    manifest = json.loads((packed / "manifest.json").read_text())
    for name, array in arrays.items():
        np.save(packed / f"{name}.npy", array)
        manifest["arrays"][name] = packing._array_record(packed / f"{name}.npy")
    manifest.update(changes)
    manifest["fingerprint"] = packing.fingerprint(manifest)
    (packed / "manifest.json").write_text(json.dumps(manifest, indent=1))


# ----------------------------------------------------------------------------------------------------
# the arrays' bytes


@pytest.mark.parametrize("name", ARRAYS)
def test_one_flipped_byte_in_any_array_is_refused_naming_the_file(root, name):
    path = root / PACKED_DIR / f"{name}.npy"
    _flip_byte(path)  # same size, same shape: only the content checksum can notice
    message = _refused(root)
    assert f"damaged packed data: {path} does not match the sha256 recorded in manifest.json" in message


def test_check_cache_reports_the_same_damage(root):
    _flip_byte(root / PACKED_DIR / "test_images.npy", offset=-300)
    manifest, problem = check_cache(root / PACKED_DIR)
    assert manifest is None and "test_images.npy does not match the sha256" in problem


# ----------------------------------------------------------------------------------------------------
# the manifest against itself and against the arrays


# field -> (where it is, the text just before the character changed)
MANIFEST_EDITS = {
    "the fingerprint": ('"fingerprint"', '"fingerprint": "'),
    "an array's sha256": ('"train_labels": {', '"sha256": "'),
    "a class wnid": ('"classes"', '"n9900000'),
    "num_classes": ('"num_classes"', '"num_classes": '),
    "a split count": ('"splits"', '"count": 1'),
    "a class count": ('"class_counts"', "[\n   "),
    "an array's size": ('"test_images": {', '"bytes": '),
    "an array's shape": ('"train_images": {', '"shape": [\n    '),
    "an array's dtype": ('"train_images": {', '"dtype": "uint'),
    "the image shape": ('"image_shape"', '"image_shape": [\n  '),
    "the synthetic flag": ('"synthetic": ', '"synthetic": '),
    "the normalisation": ('"normalisation"', '"mean": [\n   0.'),
    "the augmentation": ('"augmentation"', '"augmentation": "'),
    "the data set's name": ('"dataset"', '"dataset": "'),
    "a class's readable name": ('"names"', '": "'),
    "a synthetic parameter": ('"synthetic_params"', '"seed": '),
    "the class order": ('"class_order"', '"class_order": "'),
    "the count of skipped images": ('"skipped"', '"skipped": '),
    "the count of converted images": ('"converted_to_rgb"', '"converted_to_rgb": '),
}


@pytest.mark.parametrize("field", list(MANIFEST_EDITS))
def test_one_changed_manifest_byte_is_refused(root, field):
    _change_one_character(root / PACKED_DIR, *MANIFEST_EDITS[field])
    message = _refused(root)
    assert f"damaged packed data: {root / PACKED_DIR / 'manifest.json'} " in message


def test_synthetic_flag_that_disagrees_with_its_parameters_is_refused(root):
    _rewrite(root / PACKED_DIR, {}, synthetic=False)
    path = root / PACKED_DIR / "manifest.json"
    assert f"{path} says synthetic is False, but its synthetic_params disagree" in _refused(root)


def test_fingerprint_mismatch_says_both_values(tiny_root, root):
    fingerprint = load_packed(tiny_root).fingerprint
    changed = ("1" if fingerprint[0] == "0" else "0") + fingerprint[1:]
    _edit_manifest(root / PACKED_DIR, fingerprint, changed)
    message = _refused(root)
    assert f"records the fingerprint {changed}, but its fields give {fingerprint}: it was edited" in message


def test_manifest_that_is_not_json_or_not_utf8(root):
    path = root / PACKED_DIR / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"class_order"', b'"class\xe9order"'))
    assert f"{path} is not valid JSON" in _refused(root)


def test_other_format_version_is_named_as_such(root):
    _edit_manifest(root / PACKED_DIR, f'"format_version": {FORMAT_VERSION}', '"format_version": 2')
    message = _refused(root)
    assert "made by another archbench version" in message
    assert f"manifest.json is format 2, and this archbench reads format {FORMAT_VERSION}" in message


# ----------------------------------------------------------------------------------------------------
# labels and counts


def _labels(root: Path, split: str) -> np.ndarray:
    return np.load(root / PACKED_DIR / f"{split}_labels.npy").copy()


@pytest.mark.parametrize("bad_label", [3, -1])
def test_label_outside_the_classes_is_refused(root, bad_label):
    labels = _labels(root, "train")
    labels[5] = bad_label
    _rewrite(root / PACKED_DIR, {"train_labels": labels})
    message = _refused(root)
    path = root / PACKED_DIR / "train_labels.npy"
    assert f"{path} holds the label {bad_label} at row 5, outside the 3 classes [0, 3)" in message


def test_class_without_training_images_is_refused(root):
    labels = _labels(root, "train")
    labels[labels == 2] = 0
    _rewrite(root / PACKED_DIR, {"train_labels": labels}, class_counts={"train": [8, 4, 0], "test": [2, 2, 2]})
    assert f"train_labels.npy has no image of class {wnid(2)}" in _refused(root)


def test_class_counts_that_disagree_with_the_manifest_are_refused(root):
    _rewrite(root / PACKED_DIR, {}, class_counts={"train": [5, 3, 4], "test": [2, 2, 2]})
    message = _refused(root)
    assert f"manifest.json records 5 train images of class {wnid(0)}, but train_labels.npy holds 4" in message


def test_empty_split_is_refused(root):
    empty = {"test_images": np.zeros((0, 64, 64, 3), np.uint8), "test_labels": np.zeros(0, np.int64)}
    _rewrite(
        root / PACKED_DIR,
        empty,
        splits={"train": {"count": 12}, "test": {"count": 0}},
        class_counts={"train": [4, 4, 4], "test": [0, 0, 0]},
    )
    assert "test_labels.npy holds no labels: the test split is empty" in _refused(root)


def test_split_count_that_disagrees_with_the_arrays_is_refused(root):
    _rewrite(
        root / PACKED_DIR,
        {},
        splits={"train": {"count": 11}, "test": {"count": 6}},
        class_counts={"train": [4, 4, 3], "test": [2, 2, 2]},
    )
    assert "manifest.json records 11 train images, but train_images.npy holds 12" in _refused(root)


def _damage_class(layout: Path, c: int) -> None:
    for path in (layout / "train" / wnid(c) / "images").iterdir():
        path.write_bytes(b"not a jpeg")


def test_skip_bad_that_would_empty_a_class_is_refused_and_writes_nothing(tiny_root, tmp_path):
    layout = Path(shutil.copytree(tiny_root / LAYOUT_DIR, tmp_path / "src"))
    _damage_class(layout, 1)
    with pytest.raises(ArchbenchError) as info:
        prepare(tmp_path / "root", source=layout, skip_bad=True)
    message = info.value.message
    assert f"skipped all 4 training images of class {wnid(1)} (first: train/{wnid(1)}/images/" in message
    assert "\n" not in message and not (tmp_path / "root").exists()


def test_skip_bad_that_would_empty_a_split_is_refused_and_keeps_the_old_cache(root, tmp_path):
    layout = Path(shutil.copytree(root / LAYOUT_DIR, tmp_path / "src"))
    for path in (layout / "val" / "images").iterdir():
        path.write_bytes(b"not a jpeg")
    before = _snapshot(root / PACKED_DIR)
    with pytest.raises(ArchbenchError, match="skipped all 6 test images .* leaving the test split empty"):
        prepare(root, source=layout, skip_bad=True)
    assert _snapshot(root / PACKED_DIR) == before
    assert sorted(p.name for p in root.iterdir()) == sorted([LAYOUT_DIR, PACKED_DIR])


# ----------------------------------------------------------------------------------------------------
# once per process, and the rebuild the message names


def _count_hashing(monkeypatch) -> list[Path]:
    hashed = []
    real = packing.file_digest

    def counting(path, algorithm="sha256"):
        hashed.append(Path(path).name)
        return real(path, algorithm)

    monkeypatch.setattr(packing, "file_digest", counting)
    return hashed


def _age(packed: Path, seconds: int = 60) -> None:
    for path in packed.iterdir():
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 10**9))


def test_second_load_in_a_process_does_not_hash_again_until_a_file_changes(root, monkeypatch):
    packed = root / PACKED_DIR
    _age(packed)
    hashed = _count_hashing(monkeypatch)
    first = load_packed(root)
    assert sorted(hashed) == sorted(f"{name}.npy" for name in ARRAYS)
    hashed.clear()
    assert load_packed(root).fingerprint == first.fingerprint and hashed == []
    _flip_byte(packed / "train_labels.npy")  # a new modification time: hashed again, and refused
    assert "train_labels.npy does not match the sha256" in _refused(root)
    assert hashed == ["train_labels.npy"]


def test_file_changed_within_its_timestamp_tick_is_still_caught(root):
    """A just-written file is verified every time: a change in the same mtime tick would go unseen."""
    path = root / PACKED_DIR / "test_labels.npy"
    os.utime(path)
    load_packed(root)
    stat = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, inode and mtime as when verified
    assert "test_labels.npy does not match the sha256" in _refused(root)


def test_the_rebuild_the_message_names_restores_the_data_without_network(root, monkeypatch):
    original = load_packed(root).fingerprint
    _flip_byte(root / PACKED_DIR / "train_images.npy")
    command = re.search(r"`archbench data prepare --root (.+)`", _refused(root))
    assert Path(command.group(1)) == root

    def offline(*args, **kwargs):
        raise AssertionError("the rebuild should use the recorded source, not the network")

    monkeypatch.setattr(tinyimagenet, "download", offline)
    assert prepare(Path(command.group(1)))["fingerprint"] == original
    assert load_packed(root).fingerprint == original


def test_loading_the_packed_folder_itself_names_its_parent_as_root(root):
    _flip_byte(root / PACKED_DIR / "test_images.npy")
    with pytest.raises(ArchbenchError, match=f"--root {re.escape(str(root))}`$"):
        load_packed(root / PACKED_DIR)


@pytest.mark.parametrize("damage", ["flip a byte", "older format"])
def test_damaged_default_synthetic_set_is_regenerated(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "DEFAULT_PARAMS", TINY)
    first = resolve("synthetic")
    packed = first.root / PACKED_DIR
    if damage == "flip a byte":
        _flip_byte(packed / "train_images.npy", offset=-2000)
    else:
        _edit_manifest(packed, f'"format_version": {FORMAT_VERSION}', '"format_version": 2')
    assert check_cache(packed)[0] is None
    again = resolve("synthetic")
    assert again.root == first.root and again.fingerprint == first.fingerprint
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.root.name]
