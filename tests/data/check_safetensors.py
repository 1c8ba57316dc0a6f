#!/usr/bin/env python3
"""Checks safetensors files written by rlhf with readers that share no code with the library.

For every FILE.safetensors in DIR that has a FILE.expected.json beside it (dtype, shape and values of
each tensor, and the metadata), two independent readers are compared with the expectation:

  pure   a parser written here with json + struct only (always available);
  torch  PyTorch (Debian's python3-torch): safetensors.torch.load_file when the safetensors package
         is installed, else torch.frombuffer over each tensor's bytes.

Usage:
  check_safetensors.py [--writer TEST_BINARY] [--mode pure|torch|both] DIR

--writer runs `TEST_BINARY "[python_fixture]"` first with RLHF_PYTHON_FIXTURE_DIR=DIR, which writes the
fixture files (tests/models/checkpoint_test.cpp). Exit codes: 0 all checks passed, 1 a check failed,
77 the torch reader was requested but is not installed (ctest: SKIP_RETURN_CODE 77).
"""
import argparse
import json
import math
import os
import pathlib
import struct
import subprocess
import sys

# dtype -> (struct format character or None for raw bytes, element size)
DTYPES = {
    "BOOL": ("?", 1), "U8": ("B", 1), "I8": ("b", 1), "I16": ("h", 2), "U16": ("H", 2),
    "F16": ("e", 2), "BF16": (None, 2), "F8_E5M2": (None, 1), "F8_E4M3": (None, 1),
    "I32": ("i", 4), "U32": ("I", 4), "F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8), "U64": ("Q", 8),
}


def fail(message):
    raise AssertionError(message)


def parse_pure(path):
    """Returns (metadata, {name: (dtype, shape, [values])}) after checking the whole layout."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 8:
        fail(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        fail(f"{path}: header length {n} beyond the file")
    if n % 8 != 0:
        fail(f"{path}: rlhf pads the header to a multiple of 8 bytes, got {n}")
    header_text = data[8:8 + n].decode("utf-8")
    if not header_text.startswith("{") or not header_text.rstrip(" ").endswith("}"):
        fail(f"{path}: the header is not a JSON object padded with spaces")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            fail(f"{path}: duplicate keys in the header")
        return dict(pairs)

    header = json.loads(header_text, object_pairs_hook=no_duplicates)
    metadata = header.pop("__metadata__", {})
    buffer = data[8 + n:]
    tensors = {}
    spans = []
    for name, entry in header.items():
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            fail(f"{path}: tensor {name!r}: fields {sorted(entry)}")
        fmt, size = DTYPES[entry["dtype"]]
        shape = entry["shape"]
        begin, end = entry["data_offsets"]
        count = math.prod(shape)
        if end - begin != count * size:
            fail(f"{path}: tensor {name!r}: {end - begin} bytes for shape {shape}")
        if begin % size != 0:
            fail(f"{path}: tensor {name!r}: offset {begin} not aligned to {size}")
        raw = buffer[begin:end]
        values = list(struct.unpack(f"<{count}{fmt}", raw)) if fmt else list(raw)
        tensors[name] = (entry["dtype"], shape, values)
        spans.append((begin, end, name))
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            fail(f"{path}: tensor {name!r} begins at {begin}, expected {cursor}")
        cursor = end
    if cursor != len(buffer):
        fail(f"{path}: tensors cover {cursor} of {len(buffer)} buffer bytes")
    return metadata, tensors


def same_value(got, want):
    # Expected floats are the exact values widened to double, so equality is exact (-0.0 == 0.0 is
    # checked by sign as well).
    if isinstance(want, float) or isinstance(got, float):
        return float(got) == float(want) and math.copysign(1.0, float(got)) == math.copysign(1.0, float(want))
    return got == want


def compare(path, reader, metadata, tensors, expected):
    if metadata != expected["metadata"]:
        fail(f"{path} ({reader}): metadata {metadata} != {expected['metadata']}")
    if set(tensors) != set(expected["tensors"]):
        fail(f"{path} ({reader}): tensors {sorted(tensors)} != {sorted(expected['tensors'])}")
    for name, want in expected["tensors"].items():
        dtype, shape, values = tensors[name]
        if dtype != want["dtype"] or list(shape) != want["shape"]:
            fail(f"{path} ({reader}): tensor {name!r}: {dtype} {list(shape)} != {want['dtype']} {want['shape']}")
        if len(values) != len(want["values"]):
            fail(f"{path} ({reader}): tensor {name!r}: {len(values)} values != {len(want['values'])}")
        for i, (g, w) in enumerate(zip(values, want["values"])):
            if not same_value(g, w):
                fail(f"{path} ({reader}): tensor {name!r}[{i}]: {g!r} != {w!r}")


TORCH_NAMES = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def parse_torch(path):
    """Loads the file with PyTorch: safetensors.torch.load_file when the safetensors package is there,
    else (Debian ships torch without it) the header via json and each tensor via torch.frombuffer."""
    import torch
    names = {getattr(torch, v): k for k, v in TORCH_NAMES.items()}
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
        reader = "safetensors.torch.load_file"
        loaded = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except ImportError:
        reader = "torch.frombuffer"
        data = bytearray(pathlib.Path(path).read_bytes())
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n].decode("utf-8"))
        metadata = header.pop("__metadata__", {})
        loaded = {}
        for name, entry in header.items():
            dtype = getattr(torch, TORCH_NAMES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            if end == begin:
                loaded[name] = torch.empty(entry["shape"], dtype=dtype)
            else:
                loaded[name] = torch.frombuffer(data, dtype=dtype, count=math.prod(entry["shape"]),
                                                offset=8 + n + begin).reshape(entry["shape"])
    tensors = {}
    for name, t in loaded.items():
        tensors[name] = (names.get(t.dtype, str(t.dtype)), list(t.shape), t.flatten().tolist())
    return reader, metadata, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="directory with FILE.safetensors and FILE.expected.json pairs")
    ap.add_argument("--writer", help="test binary that writes the fixture (run with '[python_fixture]')")
    ap.add_argument("--mode", choices=["pure", "torch", "both"], default="both")
    args = ap.parse_args()
    directory = pathlib.Path(args.dir)

    if args.writer:
        directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RLHF_PYTHON_FIXTURE_DIR=str(directory))
        run = subprocess.run([args.writer, "[python_fixture]"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if run.returncode != 0:
            print(run.stdout)
            print(f"FAILED: the fixture writer exited with {run.returncode}")
            return 1

    pairs = sorted((p, p.with_name(p.name[:-len(".safetensors")] + ".expected.json"))
                   for p in directory.glob("*.safetensors"))
    pairs = [(f, e) for f, e in pairs if e.exists()]
    if not pairs:
        print(f"FAILED: no FILE.safetensors with FILE.expected.json in {directory}")
        return 1

    torch_missing = False
    try:
        for path, expected_path in pairs:
            expected = json.loads(expected_path.read_text())
            if args.mode in ("pure", "both"):
                compare(path, "pure", *parse_pure(path), expected)
                print(f"ok (pure json+struct reader): {path.name}")
            if args.mode in ("torch", "both") and not torch_missing:
                try:
                    reader, *parsed = parse_torch(path)
                except ImportError as e:
                    torch_missing = True
                    print(f"torch reader unavailable ({e})")
                    continue
                compare(path, reader, *parsed, expected)
                print(f"ok (PyTorch, {reader}): {path.name}")
    except AssertionError as e:
        print(f"FAILED: {e}")
        return 1
    if torch_missing:
        print("skipped: python3-torch not installed")
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
