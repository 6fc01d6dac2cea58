"""Reading a torch-saved state dict without torch: {name: numpy array} from torch's zip format (torch >= 1.6) or
its legacy format. A restricted unpickler: tensors, storages and OrderedDict only; any other global is refused, so
loading a file runs no code. Used for pytorch-fid's Inception weights (jaxgen.evaluation.inception)."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np


class _Storage:
    """A torch storage class named in the pickle (torch.FloatStorage ...): only its numpy dtype matters."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _storage_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # noqa: PLC0415  (a jax dependency; only bfloat16 storages need it)

    return {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
            "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
            "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 as a numpy view into the storage (copied once everything is read). The view
    is checked to lie inside the storage: a crafted file cannot make it read other memory."""
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if offset < 0 or len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"malformed tensor: offset {offset}, size {size}, stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(storage) or (not size and offset >= len(storage)):
        raise pickle.UnpicklingError(f"tensor view (offset {offset}, size {size}, stride {stride}) exceeds its "
                                     f"storage of {len(storage)} elements")
    if not size:
        return storage[offset:offset + 1].reshape(())
    return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * storage.itemsize for s in stride))


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict with numpy arrays for tensors; any other global is refused, so no code runs."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._dtypes = _storage_dtypes()

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # a state dict, and its _metadata attribute
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        if module == "torch" and name in self._dtypes:
            return _Storage(self._dtypes[name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a plain torch state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self._load_storage(*pid[1:])


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A torch-saved state dict (zip format of torch >= 1.6, or the legacy one) as {name: numpy array}; no torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            root = pkl[: -len("data.pkl")]
            big = root + "byteorder" in z.namelist() and z.read(root + "byteorder").strip() == b"big"
            cache = {}

            def load(kind, key, location, numel, *_):
                if key not in cache:
                    raw = z.read(f"{root}data/{key}")
                    cache[key] = (np.frombuffer(raw, kind.dtype.newbyteorder(">")).astype(kind.dtype) if big
                                  else np.frombuffer(raw, kind.dtype))
                return cache[key]

            obj = _TorchUnpickler(z.open(pkl), load).load()
    else:
        with open(path, "rb") as f:
            magic = _TorchUnpickler(f, None).load()
            if magic != 0x1950A86A20F9469CFC6C:
                raise ValueError(f"{path} is not a torch-saved file (neither a zip archive nor torch's legacy format)")
            for _ in range(2):  # the protocol version, then the saving machine's sys info
                _TorchUnpickler(f, None).load()
            storages = {}

            def load(kind, key, location, numel, view=None):
                if key not in storages:
                    if not 0 <= int(numel) <= os.path.getsize(path) // kind.dtype.itemsize:
                        raise pickle.UnpicklingError(f"storage of {numel} elements cannot be in this file")
                    storages[key] = np.empty(numel, kind.dtype)  # filled from the data section below
                if view is not None:  # old torch: a storage view (view key, offset, size) into this one
                    return storages[key][view[1]:view[1] + view[2]]
                return storages[key]

            obj = _TorchUnpickler(f, load).load()
            for key in _TorchUnpickler(f, None).load():
                numel = int(np.frombuffer(f.read(8), "<i8")[0])
                s = storages[key]
                s[:numel] = np.frombuffer(f.read(numel * s.itemsize), s.dtype)  # little-endian, as written
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: np.array(v) for k, v in obj.items()}  # copies: the views no longer share the storages
