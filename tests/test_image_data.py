"""Image datasets for GANs: `image_folder` on folders the tests write, `celeb_a` under tfds.testing.mock_data and its
fallback to data.path. Offline and fast: nothing here may trigger a download."""

import logging

import numpy as np
import pytest
from PIL import Image

from jaxgen import data
from jaxgen.config import gan_config
from jaxgen.data import cache as caches
from jaxgen.data import image_folder as imf
from jaxgen.data import tfds_source
from tests.conftest import started_together


def _cfg(tmp_path, name="image_folder", **kw):
    c = gan_config().data  # unlocked
    c.name, c.data_dir = name, str(tmp_path / "data")
    c.update(kw)
    return c


def _solid(mode, size, value):
    return Image.new(mode, size, value)


def _write_folder(root):
    """7 images, 1 broken file and a non-image: a top-level image, 'cats' (nested) and 'dogs'; sizes and modes mixed.

    Returns the expected labels of the readable images in sorted-path order ('' = 0, cats = 1, dogs = 2).
    """
    (root / "cats" / "sub").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / ".thumbs").mkdir()
    _solid("RGB", (40, 30), (255, 0, 0)).save(root / "top.jpg", quality=95)
    _solid("RGB", (50, 80), (0, 255, 0)).save(root / "cats" / "a.JPG", quality=95)
    _solid("L", (20, 50), 200).save(root / "cats" / "sub" / "b.png")
    _solid("RGBA", (33, 33), (0, 0, 255, 128)).save(root / "dogs" / "c.PNG")
    p = Image.new("P", (25, 17), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.save(root / "dogs" / "d.png")
    _solid("CMYK", (30, 30), (0, 0, 0, 0)).save(root / "dogs" / "e.jpeg")
    (root / "dogs" / "f_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "dogs" / "readme.txt").write_text("not an image")
    _solid("RGB", (8, 8), 0).save(root / ".thumbs" / "hidden.jpg")  # hidden folders are skipped
    # sorted: cats/a.JPG, cats/sub/b.png, dogs/c.PNG, dogs/d.png, dogs/e.jpeg, (dogs/f_broken.jpg), top.jpg
    return [1, 1, 2, 2, 2, 0]


def test_image_folder_modes_sizes_labels_and_corrupt_file(tmp_path, caplog):
    root = tmp_path / "imgs"
    labels = _write_folder(root)
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        d = data.load(_cfg(tmp_path, path=str(root), resolution=16), "train")
    assert d.image.shape == (6, 16, 16, 3) and d.image.dtype == np.uint8
    assert d.label.tolist() == labels
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 1 unreadable" in warnings[0] and "f_broken.jpg" in warnings[0]
    mean = d.image.reshape(6, -1, 3).mean(1)
    np.testing.assert_allclose(mean[0], [0, 255, 0], atol=3)  # RGB JPEG
    np.testing.assert_allclose(mean[1], [200, 200, 200], atol=1)  # L -> grey RGB
    np.testing.assert_allclose(mean[2], [0, 0, 255], atol=1)  # RGBA: alpha dropped
    np.testing.assert_allclose(mean[3], [10, 20, 30], atol=1)  # P -> its palette colour
    np.testing.assert_allclose(mean[4], [255, 255, 255], atol=3)  # CMYK (0, 0, 0, 0) is white
    assert data.load(_cfg(tmp_path, path=str(root), resolution=16), "test").image.shape == (6, 16, 16, 3)  # 0% held out


def test_second_load_reads_the_cache_and_a_changed_folder_is_decoded_again(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    _write_folder(root)
    cfg = _cfg(tmp_path, path=str(root), resolution=8, crop=20)
    first = data.load(cfg, "train")
    assert len(list((tmp_path / "data" / "jaxgen_cache" / "image_folder").glob("*/train.npz"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded an image although the cache exists")

    monkeypatch.setattr(imf, "_decode", no_decoding)
    again = data.load(cfg, "train")
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.label, first.label)
    for changed in (dict(resolution=12), dict(crop=10), dict(test_percent=50)):  # other settings: another cache
        with pytest.raises(AssertionError, match="decoded an image"):
            data.load(_cfg(tmp_path, path=str(root), **{"resolution": 8, "crop": 20, **changed}), "train")
    _solid("RGB", (10, 10), 0).save(root / "cats" / "new.png")  # a new file: another cache
    with pytest.raises(AssertionError, match="decoded an image"):
        data.load(cfg, "train")
    monkeypatch.undo()
    data.load(cfg, "train")
    monkeypatch.setattr(imf, "_decode", no_decoding)
    a, b = root / "cats" / "a.JPG", root / "top.jpg"  # two files swap places: the same names, sizes and times
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    with pytest.raises(AssertionError, match="decoded an image"):
        data.load(cfg, "train")


def test_read_only_data_dir_still_loads(tmp_path, caplog):
    root = tmp_path / "imgs"
    _write_folder(root)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # a file where the cache dir would go: mkdir fails, as on a read-only data dir
    cfg = _cfg(tmp_path, path=str(root), resolution=8)
    cfg.data_dir = str(blocker)
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        assert data.load(cfg, "train").image.shape == (6, 8, 8, 3)
    assert any("Could not cache" in r.getMessage() for r in caplog.records)


def _numbered_folder(root, n=60, size=(6, 6)):
    """n lossless PNGs whose pixels encode their index, so images can be matched across splits."""
    for i in range(n):
        (root / f"g{i % 3}").mkdir(parents=True, exist_ok=True)
        _solid("RGB", size, (i, 255 - i, 7)).save(root / f"g{i % 3}" / f"{i:03d}.png")


def test_test_percent_split_is_disjoint_deterministic_and_complete(tmp_path):
    root = tmp_path / "imgs"
    _numbered_folder(root)
    ids = lambda d: sorted(d.image[:, 0, 0, 0].tolist())  # noqa: E731
    cfg = _cfg(tmp_path, path=str(root), test_percent=30)
    train, test = data.load(cfg, "train"), data.load(cfg, "test")
    assert train.image.shape[1:] == (6, 6, 3)  # resolution 0 and crop 0 keep the size
    assert not set(ids(train)) & set(ids(test)) and sorted(ids(train) + ids(test)) == list(range(60))
    assert 8 <= len(test) <= 30
    # Deterministic: decoded afresh into another data dir, the same files land in the same split.
    cfg2 = _cfg(tmp_path / "other", path=str(root), test_percent=30)
    assert ids(data.load(cfg2, "test")) == ids(test) and ids(data.load(cfg2, "train")) == ids(train)
    # 0 = test is train.
    cfg0 = _cfg(tmp_path, path=str(root))
    assert ids(data.load(cfg0, "test")) == ids(data.load(cfg0, "train")) == list(range(60))
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        data.load(cfg, "validation")


def test_each_split_keeps_path_order_and_labels_with_broken_files_among_them(tmp_path, monkeypatch):
    """Decoded train split first (broken files compacted in place), each split a view of one array, not a copy: the
    arrays still hold each split's readable files in sorted-path order, each with its folder's label."""
    root = tmp_path / "imgs"
    _numbered_folder(root)
    for name in ("g0/001_broken.png", "g2/050_broken.png"):
        (root / name).write_bytes(b"not a png")
    cfg = _cfg(tmp_path, path=str(root), test_percent=30)
    written, write = {}, imf.write_npz
    monkeypatch.setattr(imf, "write_npz", lambda path, **a: written.update({path.stem: a["image"]}) or write(path, **a))
    data.load(cfg, "train")
    assert written["train"].base is not None and written["train"].base is written["test"].base  # views, no copy
    files = [f for f in imf.list_images(root) if "broken" not in f]
    held = imf.is_test(files, 30)
    for split, mask in (("train", ~held), ("test", held)):
        d = data.load(cfg, split)
        want = [int(f.split("/")[1][:3]) for f, m in zip(files, mask) if m]
        assert d.image[:, 0, 0, 0].tolist() == want and d.label.tolist() == [i % 3 for i in want]


def test_renamed_files_links_and_names_that_are_not_utf8(tmp_path, caplog):
    import os

    root = tmp_path / "imgs"
    _numbered_folder(root)
    cfg = _cfg(tmp_path, path=str(root))
    assert data.load(cfg, "train").label[0] == 0  # image 0 in g0
    (root / "g0" / "000.png").rename(root / "g1" / "000.png")  # count, bytes and times unchanged: still a new cache
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        d = data.load(cfg, "train")
    assert d.label[d.image[:, 0, 0, 0].tolist().index(0)] == 1
    assert "1 other cache(s) of" in caplog.text and "Delete them when no run reads them" in caplog.text  # kept
    assert len(list((tmp_path / "data" / "jaxgen_cache" / "image_folder").iterdir())) == 2
    caplog.clear()
    (root / "g1" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a link to nothing: left out
    (root / "g0" / "up").symlink_to(root)  # a loop, and second names for a folder: each folder read where it is
    (root / "g3").symlink_to(root / "g2")
    (root / "g0" / "alias").symlink_to(root / "g2")  # read first in path order, yet g2 keeps its images and label
    with open(os.path.join(os.fsencode(root / "g2"), b"caf\xe9.png"), "wb") as f:  # an old archive's name
        _solid("RGB", (6, 6), (200, 0, 7)).save(f, format="PNG")
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        both = [data.load(_cfg(tmp_path, path=str(root), test_percent=pct), "train") for pct in (0, 30)]
    assert sorted(both[0].image[:, 0, 0, 0].tolist()) == sorted([*range(60), 200])
    ids, labels = both[0].image[:, 0, 0, 0].tolist(), both[0].label.tolist()
    assert {labels[ids.index(i)] for i in range(2, 60, 3)} == {2} and set(labels) == {0, 1, 2}
    assert caplog.text.count("Skipped 3 linked folder(s)") == 1  # once, for both loads
    assert all(f"'{name}'" in caplog.text for name in ("g0/up", "g0/alias", "g3"))
    assert 0 < len(both[1]) < 61


def test_jobs_started_together_on_one_folder_decode_it_once(tmp_path, monkeypatch, caplog):
    """A sweep's jobs on one new folder: the first decodes under a lock, the others wait for it and read its cache."""
    import time

    root = tmp_path / "imgs"
    _numbered_folder(root, n=12)
    calls, decode = [], imf.decode_all

    def slow_decode(*a, **k):
        calls.append(1)
        time.sleep(0.5)  # long enough for the other job to find the lock taken
        return decode(*a, **k)

    monkeypatch.setattr(imf, "decode_all", slow_decode)
    cfg = _cfg(tmp_path, path=str(root))
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        got = started_together(lambda: data.load(cfg, "train"))
    assert len(calls) == 1 and len(got) == 2 and "waiting for it, then reading its arrays" in caplog.text
    np.testing.assert_array_equal(got[0].image, got[1].image)


def test_resolution_zero_keeps_one_size_and_takes_the_smallest_side_of_mixed_sizes(tmp_path, monkeypatch, caplog):
    root = tmp_path / "imgs"
    _numbered_folder(root, n=4, size=(8, 6))
    assert data.load(_cfg(tmp_path, path=str(root)), "train").image.shape == (4, 6, 8, 3)  # not square, as stored
    assert data.load(_cfg(tmp_path, path=str(root), crop=4), "train").image.shape == (4, 4, 4, 3)  # crop only
    _solid("RGB", (12, 9), (90, 80, 70)).save(root / "g0" / "odd.png")  # another size (and shorter side 9 > 6)
    _solid("L", (20, 5), 200).save(root / "g1" / "thin.png")  # and mode; its shorter side, 5, is the smallest
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        d = data.load(_cfg(tmp_path, path=str(root)), "train")
    assert d.image.shape == (6, 5, 5, 3) and d.image.dtype == np.uint8
    assert any("differ in size and data.resolution is 0: using the smallest side found, 5," in r.getMessage()
               for r in caplog.records)
    mean = d.image.reshape(6, -1, 3).mean(1)  # sorted: g0/000, g0/003, g0/odd, g1/001, g1/thin, g2/002
    np.testing.assert_allclose(mean[2], [90, 80, 70], atol=1)  # g0/odd.png, centre-cropped to 9 x 9 then resized
    np.testing.assert_allclose(mean[4], [200, 200, 200], atol=1)  # g1/thin.png, L -> grey RGB
    # With a crop, the clamped crops decide: 'thin' is 5 pixels high, so 4 x 4 crops fit all, 7 x 7 crops do not.
    assert data.load(_cfg(tmp_path, path=str(root), crop=4), "train").image.shape == (6, 4, 4, 3)
    assert data.load(_cfg(tmp_path, path=str(root), crop=7), "train").image.shape == (6, 5, 5, 3)
    # The choice is cached with the rest: a second load decodes nothing and gives the same arrays.
    monkeypatch.setattr(imf, "_decode", lambda *a, **k: pytest.fail("decoded an image although the cache exists"))
    np.testing.assert_array_equal(data.load(_cfg(tmp_path, path=str(root)), "train").image, d.image)


def test_a_thumbnail_among_larger_images_is_named_when_it_sets_the_size(tmp_path, caplog):
    root = tmp_path / "imgs"
    _numbered_folder(root, n=4, size=(16, 16))
    _solid("RGB", (1, 1), (10, 20, 30)).save(root / "g0" / "tiny.png")
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        d = data.load(_cfg(tmp_path, path=str(root)), "train")
    assert d.image.shape[1:] == (1, 1, 3)  # what resolution 0 means; the warning says so and names the file
    assert "1 image(s) in" in caplog.text and "the smallest 1 px" in caplog.text and "'g0/tiny.png'" in caplog.text


def test_bad_paths_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"data.path is empty.*--config.data.path=DIR"):
        data.load(_cfg(tmp_path), "train")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*does not exist.*--config.data.path=DIR"):
        data.load(_cfg(tmp_path, path=str(missing)), "train")
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data.load(_cfg(tmp_path, path=str(tmp_path / "file.jpg")), "train")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=rf"no images in {empty} \(looked for .jpg, .jpeg, .png"):
        data.load(_cfg(tmp_path, path=str(empty)), "train")
    with pytest.raises(ValueError, match="splits 'train' and 'test', not 'validation'; a 'validation' split is held "
                                         "out of 'train' by data.validation_examples"):
        data.load(_cfg(tmp_path, path=str(empty)), "validation")


def test_camera_photos_stand_upright_and_a_malformed_exif_block_does_not_stop_the_decode(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 comes out upright (as ImageOps.exif_transpose turns it). One
    whose EXIF also holds a tag of the wrong type (ASCII where Pillow expects a number, as some cameras write)
    made exif_transpose raise struct.error while rewriting the EXIF, which stopped the whole folder's decode."""
    import struct

    from PIL import ImageOps

    root = tmp_path / "imgs"
    root.mkdir()
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; upright (turned 90 degrees clockwise): top half white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "a_rotated.png", exif=exif.tobytes())
    Image.fromarray(stored).save(root / "c_tiff.png", format="TIFF", exif=exif.tobytes())  # Pillow turns it on load
    ifd = (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2)
           + struct.pack(">HHI", 0x0107, 2, 7) + struct.pack(">I", 8 + 2 + 24 + 4)  # ASCII 'camera' at 38
           + struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">HH", 6, 0)  # orientation 6
           + b"\0\0\0\0" + b"camera\0")
    Image.fromarray(stored).save(root / "b_malformed.jpg", exif=b"Exif\0\0" + ifd, quality=95)
    with Image.open(root / "b_malformed.jpg") as im, pytest.raises(Exception):  # noqa: B017 (Pillow's own error)
        ImageOps.exif_transpose(im)
    d = data.load(_cfg(tmp_path, path=str(root), resolution=0, crop=0), "train")
    assert d.image.shape == (3, 40, 24, 3)  # all read, all turned upright once: 40 high, 24 wide
    for i, name in ((0, "a_rotated.png"), (2, "c_tiff.png")):
        with Image.open(root / name) as im:
            np.testing.assert_array_equal(d.image[i], np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    top, bottom = d.image[1, :18].mean(), d.image[1, 22:].mean()
    assert top > 240 and bottom < 15, (top, bottom)


def test_float_images_are_scaled_and_unreadable_folders_are_said(tmp_path, monkeypatch, caplog):
    """A float image (Pillow mode F, values in [0, 1]) came out all black; a folder that cannot be read, and images
    in formats jaxgen does not read, were left out silently; an image smaller than the resolution was enlarged
    silently."""
    import os

    root = tmp_path / "imgs"
    (root / "locked").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(root / "f.tiff.png", format="TIFF")
    _solid("RGB", (8, 8), (0, 0, 0)).save(root / "locked" / "x.png")
    (root / "phone.HEIC").write_bytes(b"")
    _solid("L", (4, 4), 128).save(root / "small.png")
    scandir = os.scandir

    def denied(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)  # as a folder of mode 000 is to a user who is not root
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        d = data.load(_cfg(tmp_path, path=str(root), resolution=8), "train")
    assert d.image.shape == (2, 8, 8, 3) and abs(float(d.image[0].mean()) - 127.5) <= 1  # 0.5 -> 128, not 0
    assert "1 image(s) in" in caplog.text and "are smaller than data.resolution=8: enlarged" in caplog.text
    assert "Could not read 1 folder(s)" in caplog.text and "locked" in caplog.text and "PermissionError" in caplog.text
    assert "Left out 1 image file(s) under" in caplog.text and "(.heic: 1); it reads .jpg, .jpeg, .png" in caplog.text


def test_an_image_over_pillows_pixel_limit_is_skipped_and_explained(tmp_path, monkeypatch, caplog):
    root = tmp_path / "imgs"
    root.mkdir()
    _solid("RGB", (8, 8), (0, 0, 0)).save(root / "a.png")
    _solid("RGB", (16, 16), (0, 0, 0)).save(root / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 > 2 x 100: DecompressionBombError
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        d = data.load(_cfg(tmp_path, path=str(root), resolution=8), "train")
    assert d.image.shape == (1, 8, 8, 3)
    assert "'huge.png' (DecompressionBombError)" in caplog.text
    assert "1 of them (DecompressionBombError) have more pixels than Pillow opens" in caplog.text


def test_crop_and_resize_centres_and_clamps():
    img = np.zeros((218, 178, 3), np.uint8)
    img[55:163, 35:143] = 255  # the centred 108 x 108 square
    out = imf.crop_and_resize(img, 64, 108)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.min() == 255
    assert imf.crop_and_resize(img, 0, 108).shape == (108, 108, 3)
    assert imf.crop_and_resize(img, 0, 0).shape == (218, 178, 3)
    big = imf.crop_and_resize(img, 32, 500)  # larger than the image: the largest centred square (178)
    np.testing.assert_array_equal(big, imf.crop_and_resize(img, 32, 0))
    assert imf.crop_and_resize(img[..., :1], 16, 0).shape == (16, 16, 3)  # grey -> RGB


def test_celeb_a_under_mock_data_is_cropped_and_resized_and_not_cached(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "can_reach", lambda host, port=443: pytest.fail("no network in tests"))
    monkeypatch.setattr(tfds_source, "has_tensorflow", lambda: True)
    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOSTS", {})
    cfg = _cfg(tmp_path, name="celeb_a", resolution=64, crop=108)
    with tfds.testing.mock_data(num_examples=12):
        d = data.load(cfg, "train")
        v = data.load(cfg, "validation")
    assert d.image.shape == (12, 64, 64, 3) and d.image.dtype == np.uint8 and v.image.shape == (12, 64, 64, 3)
    assert d.label.tolist() == [0] * 12
    # mock_data's random faces are not cached (a later real run would read them as CelebA); the caching of a
    # prepared split: tests/test_data.py
    assert not (tmp_path / "data" / "jaxgen_cache" / "celeb_a" / "train_r64_c108.npz").exists()


def test_celeb_a_with_data_path_reads_the_folder_without_trying_tfds_and_says_so(tmp_path, monkeypatch, caplog):
    def no_tfds(*a, **k):
        raise AssertionError("TFDS was tried although data.path is set")

    real_source = tfds_source._source
    monkeypatch.setattr(tfds_source, "can_reach", lambda host, port=443: pytest.fail("no network in tests"))
    monkeypatch.setattr(tfds_source, "_source", no_tfds)
    root = tmp_path / "img_align_celeba"
    root.mkdir()
    for i in range(5):
        _solid("RGB", (178, 218), (i * 40, 0, 0)).save(root / f"{i:06d}.jpg")
    cfg = _cfg(tmp_path, name="celeb_a", download=True, path=str(root), resolution=32, crop=108)
    tfds_cache = tmp_path / "data" / "jaxgen_cache" / "celeb_a" / "train_r32_c108.npz"
    tfds_cache.parent.mkdir(parents=True)
    # ignored: data.path wins
    imf.write_npz(tfds_cache, image=np.zeros((2, 32, 32, 3), np.uint8), label=np.zeros(2, np.int32))
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        d = data.load(cfg, "train")
    assert d.image.shape == (5, 32, 32, 3) and d.label.tolist() == [0] * 5
    assert any("as an image folder (TFDS is not used when data.path is set)" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setattr(tfds_source, "_source", real_source)
    tfds_cache.unlink()
    cfg.path, cfg.download = "", False
    with pytest.raises(tfds_source.DatasetUnavailableError, match=r"data.download is False") as e:
        data.load(cfg, "train")
    assert "or point --config.data.path at the img_align_celeba folder you already have" in str(e.value)


def test_cache_files_are_readable_as_open_would_make_them(tmp_path):
    """Caches in a shared data dir must stay readable by the others who share it (mkstemp alone gives 0600)."""
    import os

    from jaxgen import atomic

    path = tmp_path / "c.npz"
    atomic.write_npz(path, image=np.zeros((2, 2), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left


def test_a_resolution_the_gan_lacks_is_refused_before_the_folder_is_decoded(tmp_path, monkeypatch):
    """dcgan at data.resolution=48 on an image folder: the error lists the supported resolutions before a single
    image is decoded (on CelebA's 200k files the decode takes minutes)."""
    from jaxgen.training import loop

    c = gan_config()
    c.data.name, c.data.path, c.data.resolution, c.data.data_dir = "image_folder", str(tmp_path), 48, str(tmp_path)
    c.model.name = "dcgan"
    monkeypatch.setattr(imf, "decode_all", lambda *a, **k: pytest.fail("decoded before the resolution check"))
    with pytest.raises(ValueError, match="dcgan supports resolutions 28, 32, 64; got 48x48"):
        loop.build_task(c, tmp_path / "run")


def test_an_interruption_while_decoding_cancels_the_queued_chunks():
    """Ctrl-C (or launch.py's SIGTERM) during a decode: the chunks not yet started are cancelled, so the run stops
    once those under way end (the executor's own exit would decode the whole folder first)."""
    import time

    ran = []

    def work(i):
        time.sleep(0.05)
        ran.append(i)

    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), caches.thread_pool() as pool:
        for i, _ in enumerate(pool.map(work, range(400))):
            if i == 1:
                raise KeyboardInterrupt
    time.sleep(0.3)  # the chunks under way end
    assert len(ran) < 40 and time.perf_counter() - t < 5
