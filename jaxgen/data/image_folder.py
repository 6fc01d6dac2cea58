"""`image_folder`: any folder of JPEG/PNG images, decoded once into uint8 arrays and cached in the data dir.

Files are found recursively (`.jpg`, `.jpeg`, `.png`, any case; hidden files and folders skipped) and ordered by
their sorted relative paths. A file's label is the index of its first-level subfolder among the sorted first-level
subfolders that hold images, files at the top level counting as the folder '' (so a flat folder is all 0, and the
top level, if it also holds images, is 0 and the subfolders 1..K). Every image is converted to RGB, centre-cropped
and resized (`crop_and_resize`); unreadable files are skipped and counted in one warning. With data.resolution 0 the
images keep their size if they all come out the same size; otherwise the smallest side found among them (after the
crop) is chosen as the resolution, logged, and every image is centre-cropped and resized to that square.

The first load decodes both splits in one pass (threads, not processes: JAX is running, fork is unsafe) and writes
`<data_dir>/jaxgen_cache/image_folder/<key>/{train,test}.npz`, the key hashing the folder's absolute path, the
resolution, crop and test_percent, and a fingerprint of the files (each one's relative path, size and modification
time): adding, removing, renaming, swapping or touching an image makes a new cache, later loads read the arrays and
decode nothing. Links are followed, each folder read once, where it is (`list_images`), and a link to nothing is left
out. Jobs started together on one new folder decode it once: the first holds a lock, the others read its arrays. (The
size chosen for resolution 0 depends only on the files and the crop, so that key determines it too.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from jaxgen import parallel
from jaxgen.atomic import write_npz, write_text
from jaxgen.data import cache as caches

log = logging.getLogger("jaxgen")

EXTENSIONS = (".jpg", ".jpeg", ".png")
OTHER_FORMATS = (".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif")  # left out, and counted in the log
CACHE_VERSION = 2  # bump when decoding changes, so old caches are not reused (2: EXIF without exif_transpose, F)
# What decoding a broken file raises (skipped and counted). Narrow on purpose: anything else (a bug, a MemoryError)
# stops the decode, since the decoded folder is cached without the files skipped.
_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
# EXIF orientation -> the transpose that stands the image upright (as ImageOps.exif_transpose, which also rewrites
# the EXIF block afterwards and fails on some cameras' malformed tags; Pillow issues #6882, #7839).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


class SizesDifferError(ValueError):
    """With resolution 0, the images of a folder came out in more than one size."""


def crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) of side `crop`; 0, or a crop larger than the image, gives the
    largest centred square (the crop is clamped to the shorter side; callers count and report that)."""
    side = min(height, width) if crop <= 0 else min(crop, height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (camera photos are stored rotated); an EXIF block that
    cannot be read leaves it as stored. Loaded first: Pillow's TIFF reader turns the pixels as it loads them and
    drops the tag, so they are not turned twice."""
    image.load()
    try:
        method = _UPRIGHT.get(image.getexif().get(0x0112))
    except Exception:  # a malformed EXIF block: the pixels as stored
        return image
    return image if method is None else image.transpose(method)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, RGBA, P, CMYK, I;16, F ...) as RGB; alpha is dropped (as torchvision does)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit or float grayscale: scaled to 8 bits, not
        a = np.nan_to_num(np.asarray(image).astype(np.float64))  # clipped (a float image in [0, 1]: all black)
        if image.mode == "F":
            scale = 255.0 if a.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 1.0
        image = Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
    return image.convert("RGB")


def crop_and_resize(image: np.ndarray | Image.Image, resolution: int, crop: int) -> np.ndarray:
    """One image -> uint8 [R, R, 3] RGB (R = `resolution`).

    image: uint8 [H, W, C] (C = 1 or 3) or a Pillow image of any mode. `crop` > 0 takes the centred square of that
    side in source pixels (clamped to the shorter side); `crop` 0 takes the largest centred square. The square is
    then resized with Pillow's antialiased BICUBIC. resolution 0 keeps the size: the crop only if `crop` > 0,
    otherwise the image as it is ([H, W, 3]).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    image = to_rgb(image)
    if resolution <= 0 and crop <= 0:
        return np.asarray(image, np.uint8)
    box = crop_box(image.height, image.width, crop)
    side = box[2] - box[0]
    image = image.crop(box)  # first: resize(box=...) would let the filter see pixels outside the crop
    if resolution > 0 and resolution != side:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


def _decode(path: Path, resolution: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A file -> (uint8 [R, R, 3], int [2]: whether the crop was clamped, whether the square was enlarged to R).
    Raises one of _BAD_IMAGE on a broken file."""
    with Image.open(path) as stored:
        image = upright(stored)
        side = min(image.height, image.width)
        flags = np.asarray([crop > side, 0 < resolution and min(side, crop or side) < resolution], int)
        return crop_and_resize(image, resolution, crop), flags


_WARNED: set[tuple[str, tuple[str, ...]]] = set()  # (folder, skipped links) list_images has warned about


def list_images(folder: Path) -> list[str]:
    """Sorted relative POSIX paths of the images under `folder` (recursive, hidden files and folders skipped).

    Links are followed, but each folder is read once, where it is: a link to a folder inside `folder` (or a loop
    back up) is skipped, since that folder is read under its own name and label; of several links to one folder
    outside, the first in sorted order is read. Links to nothing are left out."""
    top = os.path.realpath(folder)
    found, seen, skipped, unreadable, other = [], set(), [], [], []
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable.append):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a second link to a folder outside, already read
            dirs[:] = []
            skipped.append(Path(root).relative_to(folder).as_posix())
            continue
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            path = os.path.join(root, d)
            real = os.path.realpath(path)
            if os.path.islink(path) and (real == top or real.startswith(top + os.sep)):
                skipped.append(Path(path).relative_to(folder).as_posix())
            else:
                keep.append(d)
        dirs[:] = keep
        rel = Path(root).relative_to(folder)
        found += [(rel / f).as_posix() for f in files if not f.startswith(".") and f.lower().endswith(EXTENSIONS)
                  and os.path.isfile(os.path.join(root, f))]
        other += [os.path.splitext(f)[1].lower() for f in files
                  if not f.startswith(".") and f.lower().endswith(OTHER_FORMATS)]
    if skipped and (str(folder), tuple(skipped)) not in _WARNED:  # once, not once per split
        _WARNED.add((str(folder), tuple(skipped)))
        log.warning("Skipped %d linked folder(s) under %s that lead to a folder read elsewhere (inside it, or through "
                    "another link): %s%s", len(skipped), folder, ", ".join(repr(a) for a in skipped[:5]),
                    " ..." if len(skipped) > 5 else "")
    if other and (str(folder), ("other formats", str(len(other)))) not in _WARNED:
        _WARNED.add((str(folder), ("other formats", str(len(other)))))
        counts = ", ".join(f"{ext}: {other.count(ext)}" for ext in sorted(set(other)))
        log.warning("Left out %d image file(s) under %s in formats jaxgen does not read (%s); it reads %s: convert "
                    "them to PNG to train on them", len(other), folder, counts, ", ".join(EXTENSIONS))
    if unreadable and (str(folder), tuple(map(str, unreadable))) not in _WARNED:
        _WARNED.add((str(folder), tuple(map(str, unreadable))))
        log.warning("Could not read %d folder(s) under %s, whose images are left out: %s%s", len(unreadable), folder,
                    ", ".join(f"{e.filename!r} ({type(e).__name__})" for e in unreadable[:5]),
                    " ..." if len(unreadable) > 5 else "")
    return sorted(found)


def labels_of(files: list[str]) -> np.ndarray:
    """int32 [N]: the index of each file's first-level subfolder in sorted order ('' for the top level)."""
    group = [f.split("/", 1)[0] if "/" in f else "" for f in files]
    index = {name: i for i, name in enumerate(sorted(set(group)))}
    return np.asarray([index[g] for g in group], np.int32)


def is_test(files: list[str], test_percent: int) -> np.ndarray:
    """bool [N]: the files held out as 'test', by a stable hash of the relative path (same on every machine)."""
    h = [int.from_bytes(hashlib.sha1(_utf8(f)).digest()[:8], "little") % 100 for f in files]
    return np.asarray(h, np.int64) < test_percent


def _utf8(name: str) -> bytes:
    """A file name's bytes; one that is not UTF-8 (an old archive's) keeps its original bytes."""
    return name.encode("utf-8", "surrogateescape")


def _folder(data_config) -> Path:
    if not data_config.path:
        raise ValueError("data.path is empty: set --config.data.path=DIR to the folder of images to train on")
    folder = Path(data_config.path).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"data.path {str(folder)!r} {what}: set --config.data.path=DIR to a folder of images")
    return folder.resolve()


def _cache_dir(data_config, folder: Path, files: list[str]) -> Path:
    # Each file's name, size and modification time: a rename moves labels and splits; two files that swap places
    # keep the sums and the newest time, not the pairs. (Content rewritten with its size and time kept, as
    # `cp -p` can, goes unnoticed: remove the cache folder then.)
    digest = hashlib.sha1()
    for f in files:
        s = os.stat(folder / f)
        digest.update(_utf8(f) + b"\0" + f"{s.st_size} {s.st_mtime_ns}\n".encode())
    fingerprint = (len(files), digest.hexdigest())
    key = repr((CACHE_VERSION, str(folder), data_config.resolution, data_config.crop, data_config.test_percent,
                fingerprint))
    return caches.data_dir(data_config) / "jaxgen_cache" / "image_folder" / hashlib.sha1(key.encode()).hexdigest()[:16]


def decode_all(folder: Path, files: list[str], resolution: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes `files` in parallel threads -> (uint8 [N, R, R, 3], bool [N] which decoded); with resolution 0,
    [N, H, W, 3] at the images' own size.

    Broken files are skipped (their rows are zero and `ok` False) and reported in one warning; so are clamped crops
    and images smaller than the resolution (enlarged: blurred).
    With resolution 0 every image must come out the same size, else SizesDifferError (see `smallest_side`).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 (only when decoding)

    n = len(files)
    bad, counts, ok = [], np.zeros(2, int), np.zeros(n, bool)  # counts: clamped crops, enlarged images
    out = None
    first = 0
    while out is None and first < n:  # the first readable image fixes the output shape
        try:
            img, c = _decode(folder / files[first], resolution, crop)
        except _BAD_IMAGE as e:
            bad.append((first, e))
            first += 1
            continue
        try:
            out = np.zeros((n, *img.shape), np.uint8)
        except MemoryError as e:
            raise MemoryError(f"{n} images of {img.shape} ({n * img.size / 2**30:.1f} GiB as uint8) do not fit in "
                              f"memory: set --config.data.resolution=R (and data.crop) to crop and resize them to R x "
                              f"R") from e
        out[first], ok[first], counts = img, True, c
    if out is None:
        raise ValueError(f"none of the {n} image files in {folder} could be read, e.g. {files[0]!r}: {bad[0][1]}")

    size_differs = threading.Event()  # with resolution 0: stop decoding at the first image of another size

    def work(start: int) -> tuple[list, np.ndarray, list]:
        errs, clamps, wrong = [], np.zeros(2, int), []
        if size_differs.is_set():
            return errs, clamps, wrong
        for i in range(start, min(n, start + caches.CHUNK)):
            try:
                img, c = _decode(folder / files[i], resolution, crop)
            except _BAD_IMAGE as e:
                errs.append((i, e))
                continue
            if img.shape != out.shape[1:]:
                wrong.append((i, img.shape))
                size_differs.set()
                break
            out[i], ok[i] = img, True
            clamps += c
        return errs, clamps, wrong

    wrong = []
    starts = range(first + 1, n, caches.CHUNK)
    with (caches.thread_pool() as pool,
          tqdm(total=n, initial=first + 1, unit="img", desc=f"decoding {folder.name}", mininterval=1.0,
               disable=n < caches.PROGRESS_MIN_FILES or not sys.stderr.isatty()) as bar):  # no \r in log files
        for start, (errs, c, w) in zip(starts, pool.map(work, starts)):
            bad += errs
            counts += c
            wrong += w
            bar.update(min(caches.CHUNK, n - start))
    if wrong:
        i, shape = wrong[0]
        raise SizesDifferError(
            f"images in {folder} differ in size ({files[first]!r} gives {out.shape[1:]}, {files[i]!r} gives {shape}): "
            f"set --config.data.resolution=R to crop and resize them all to R x R"
        )
    if bad:
        names = ", ".join(f"{files[i]!r} ({type(e).__name__})" for i, e in bad[:5])
        bombs = sum(isinstance(e, Image.DecompressionBombError) for _, e in bad)
        log.warning("Skipped %d unreadable image file(s) of %d in %s: %s%s%s", len(bad), n, folder, names,
                    " ..." if len(bad) > 5 else "",
                    f". {bombs} of them (DecompressionBombError) have more pixels than Pillow opens, 2 x "
                    f"PIL.Image.MAX_IMAGE_PIXELS, its guard against decompression bombs: shrink them, or, trusting "
                    f"the files, raise that limit in a script that then calls jaxgen" if bombs else "")
    if counts[0]:
        log.warning("data.crop=%d is larger than %d image(s) in %s: those were cropped to their largest centred "
                    "square instead", crop, counts[0], folder)
    if counts[1]:
        log.warning("%d image(s) in %s are smaller than data.resolution=%d: enlarged to it (blurred); a lower "
                    "data.resolution, or larger images, avoid that", counts[1], folder, resolution)
    return out, ok


def smallest_side(folder: Path, files: list[str], crop: int) -> int:
    """The shortest image side among `files` (read from the headers; unreadable files skipped), capped at `crop` if
    > 0: the square side every image can be centre-cropped to (clamped crops included) and resized to. A side
    under half the median one (a thumbnail among photos) is warned about, naming its files: every image shrinks
    to it."""
    sides = {}
    for f in files:
        try:
            with Image.open(folder / f) as image:  # the header only: nothing is decoded
                sides[f] = min(image.size)  # EXIF rotation swaps the sides, it does not change the shorter one
        except _BAD_IMAGE:
            continue
    side = min(sides.values())
    median = float(np.median(list(sides.values())))
    if side < median / 2 and (crop <= 0 or side < crop):
        small = [f for f, v in sides.items() if v < median / 2]
        log.warning("%d image(s) in %s have a side under half the median side (%d px), the smallest %d px: with "
                    "data.resolution 0 every image is shrunk to %d x %d. Remove them or set "
                    "--config.data.resolution=R. They are: %s%s", len(small), folder, median, side, side, side,
                    ", ".join(repr(f) for f in small[:5]), " ..." if len(small) > 5 else "")
    return min(side, crop) if crop > 0 else side


def image_folder(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 [N, R, R, 3], int32 labels [N]) of `split` ('train' or 'test') of the folder `data.path`.

    `data.test_percent` (0-99) of the files, chosen by a hash of their relative paths, form 'test' and the rest
    'train'; 0 makes 'test' the same as 'train'. See the module docstring for labels, cropping and the cache.
    """
    if split not in ("train", "test"):
        raise ValueError(f"image_folder has splits 'train' and 'test', not {split!r}"
                         + ("; a 'validation' split is held out of 'train' by data.validation_examples=N"
                            if split == "validation" else ""))
    pct, res, crop = int(data_config.test_percent), int(data_config.resolution), int(data_config.crop)
    if not 0 <= pct < 100:
        raise ValueError(f"data.test_percent must be in 0..99 (0 = test is train), got {pct}")
    if res < 0 or crop < 0:
        raise ValueError(f"data.resolution and data.crop must be >= 0, got {res} and {crop}")
    folder = _folder(data_config)
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(
            f"no images in {folder} (looked for {', '.join(EXTENSIONS)} in any case, in subfolders too): "
            f"set --config.data.path=DIR to a folder of images"
        )
    cache = _cache_dir(data_config, folder, files)
    wanted = cache / f"{split if pct else 'train'}.npz"
    if split == "test" and not pct:
        log.warning("data.test_percent=0: the 'test' split of %s is its training images, so the evaluations (FID, "
                    "D(x)) measure fit to them; --config.data.test_percent=10 holds 10%% of the files out", folder)
    # In a multi-host run process 0 decodes first, so hosts sharing the data dir read its cache.
    return parallel.process_0_first(lambda: _cached_or_decoded(folder, files, cache, wanted, res, crop, pct),
                                    needed=not caches.readable(wanted), what=f"decode the images in {folder}")


def _cached_or_decoded(folder: Path, files: list[str], cache: Path, wanted: Path, res: int, crop: int, pct: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    if wanted.exists():
        try:
            return caches.read_arrays(wanted)
        except caches.TORN_CACHE as e:
            log.warning("The cached images at %s cannot be read (%s: %s); decoding %s again", wanted,
                        type(e).__name__, e, folder)
    with caches.filling_lock(cache, f"Another process is decoding {folder} into {cache}; waiting for it, then "
                                     f"reading its arrays"):
        try:  # another process may have decoded the folder while this one waited
            return caches.read_arrays(wanted)
        except caches.TORN_CACHE:  # missing (FileNotFoundError), or still torn
            return _decode_and_cache(folder, files, cache, wanted, res, crop, pct)


def _decode_and_cache(folder: Path, files: list[str], cache: Path, wanted: Path, res: int, crop: int, pct: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    log.info("Decoding %d images in %s once (resolution %d, crop %d); caching the arrays in %s",
             len(files), folder, res, crop, cache)
    source = {"folder": str(folder), "resolution": res, "crop": crop, "test_percent": pct}
    # Decoded train split first, then test (each in path order), so that each split is a view of one array.
    order = np.argsort(is_test(files, pct), kind="stable")
    files = [files[i] for i in order]
    try:
        image, ok = decode_all(folder, files, res, crop)
    except SizesDifferError:  # resolution 0 only: one size for all, the largest that upsamples no image
        res = smallest_side(folder, files, crop)
        log.info("The images in %s differ in size and data.resolution is 0: using the smallest side found, %d, so "
                 "every image is centre-cropped and resized to %d x %d (set --config.data.resolution=R for another "
                 "size)", folder, res, res, res)
        image, ok = decode_all(folder, files, res, crop)
    label, test = labels_of(files), is_test(files, pct)
    if not ok.all():  # in place: a copy of the kept rows would hold the images twice
        keep = np.flatnonzero(ok)
        for j, i in enumerate(keep):
            if i != j:
                image[j] = image[i]
        image, label, test = image[: len(keep)], label[keep], test[keep]
    n_train = int((~test).sum())  # train rows first (the decode order), so each split is a view, not a copy
    splits = {"train": slice(0, n_train), "test": slice(n_train, None)} if pct else {"train": slice(None)}
    for name, rows in splits.items():
        if not len(label[rows]):
            raise ValueError(f"split {name!r} of {folder} is empty with data.test_percent={pct} ({len(label)} images)")
    out = {}
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("Could not cache the decoded images of %s in %s (%s): the next run decodes them again",
                    folder, cache, e)
        cache = None
    for name, rows in splits.items():
        out[name] = (image[rows], label[rows])
        if cache is not None:
            try:
                write_npz(cache / f"{name}.npz", image=out[name][0], label=out[name][1])
            except OSError as e:
                log.warning("Could not cache %s/%s.npz: %s", cache, name, e)
    if cache is not None:
        try:
            write_text(cache / "source.json", json.dumps(source) + "\n")
        except OSError:
            pass
        _mention_older_caches(cache, source)
    return out[wanted.stem]


def _mention_older_caches(cache: Path, source: dict) -> None:
    """Logs the caches of the same folder and settings made for another state of its files: jaxgen never deletes
    them (another run may still read one), so they hold disk space until the user does."""
    older = []
    for other in cache.parent.iterdir():
        try:
            if other != cache and json.loads((other / "source.json").read_text()) == source:
                older.append(other)
        except (OSError, ValueError):
            continue
    if older:
        size = sum(f.stat().st_size for d in older for f in d.iterdir() if f.is_file())
        log.info("%d other cache(s) of %s with these settings (made for another state of its files; %.2f GB) "
                 "remain: %s. Delete them when no run reads them.", len(older), source["folder"], size / 1e9,
                 ", ".join(str(d) for d in older))
