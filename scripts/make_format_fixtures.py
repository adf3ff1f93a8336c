#!/usr/bin/env python3
"""Regenerates Tests/Fixtures/formats: small GGUF and safetensors files and the float32 values
the reference Python packages (gguf, safetensors, numpy) read from them, which LoupeFormats'
tests must reproduce bit for bit.

    pip install gguf safetensors numpy
    python3 scripts/make_format_fixtures.py

Also writes smollm2_expected.json from the real SmolLM2 GGUF when it is present
($LOUPE_MODELS or ~/.cache/loupe/models; fetch it with scripts/fetch-models.sh).
"""
import json
import os
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from safetensors import safe_open

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "formats"
rng = np.random.default_rng(20240601)

# Byte offsets of the float16 scale fields inside one block of each quantized type; they are
# set to finite halves (random bytes there could be NaN or inf, which prove nothing).
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(qtype: T, rows: int, columns: int) -> np.ndarray:
    """Random quantized data for a [rows, columns] tensor: random quants, finite scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * columns // block_size, type_size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:
        # Mostly normal scales of either sign, plus some subnormals and zeros.
        scales = (rng.standard_normal(len(blocks)) * 0.05).astype(np.float16)
        scales[::7] = np.float16(3e-6)
        scales[::11] = np.float16(-0.0)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def special_halves(count: int) -> np.ndarray:
    """float16 values covering every class: normals, subnormals, zeros, infinities, NaN."""
    values = (rng.standard_normal(count) * 10).astype(np.float16)
    values[:8] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6e-8, -6e-5, 65504], dtype=np.float16)
    return values


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (truncation is fine: the fixture only needs some bf16 data)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_gguf(path: Path) -> list[dict]:
    """A GGUF v3 file with metadata of every value type and one tensor of each supported type.
    Returns the tensor manifest (name, type, row-major shape)."""
    w = gguf.GGUFWriter(str(path), arch="loupe-test")
    w.add_key_value("test.u8", 200, V.UINT8)
    w.add_key_value("test.i8", -100, V.INT8)
    w.add_key_value("test.u16", 60000, V.UINT16)
    w.add_key_value("test.i16", -30000, V.INT16)
    w.add_key_value("test.u32", 4_000_000_000, V.UINT32)
    w.add_key_value("test.i32", -2_000_000_000, V.INT32)
    w.add_key_value("test.u64", 2**63 + 5, V.UINT64)
    w.add_key_value("test.i64", -(2**62), V.INT64)
    w.add_key_value("test.f32", 0.15625, V.FLOAT32)
    w.add_key_value("test.f64", 2.718281828459045, V.FLOAT64)
    w.add_key_value("test.bool_true", True, V.BOOL)
    w.add_key_value("test.bool_false", False, V.BOOL)
    w.add_key_value("test.string", "héllo ✓", V.STRING)
    w.add_key_value("test.ints", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.strings", ["a", "", "ünïcode"], V.ARRAY)
    w.add_key_value("test.nested", [[1, 2], [3]], V.ARRAY)
    w.add_key_value("test.floats", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)

    manifest = []

    def add(name, data, qtype, shape):
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        manifest.append({"name": name, "type": qtype.name, "shape": shape})

    add("f32", rng.standard_normal((2, 3, 4)).astype(np.float32), T.F32, [2, 3, 4])
    add("f16", special_halves(3 * 40).reshape(3, 40), T.F16, [3, 40])
    bf16 = bf16_bits(rng.standard_normal(2 * 24)).reshape(2, 24)
    w.add_tensor("bf16", bf16.view(np.uint8), raw_dtype=T.BF16)
    manifest.append({"name": "bf16", "type": "BF16", "shape": [2, 24]})
    for qtype, rows, columns in [(T.Q8_0, 3, 64), (T.Q4_0, 3, 64), (T.Q4_1, 3, 64), (T.Q5_0, 3, 64),
                                 (T.Q5_1, 3, 64), (T.Q4_K, 2, 256), (T.Q5_K, 2, 256), (T.Q6_K, 2, 256)]:
        add(qtype.name.lower(), random_blocks(qtype, rows, columns), qtype, [rows, columns])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return manifest


def dequantized_by_gguf(path: Path) -> dict[str, np.ndarray]:
    """Each tensor of a GGUF file as gguf-py reads and dequantizes it, in row-major shape."""
    reader = gguf.GGUFReader(str(path))
    result = {}
    for t in reader.tensors:
        if t.tensor_type == T.BF16:
            values = (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        result[t.name] = np.asarray(values, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))
    return result


def write_safetensors(path: Path, tensors: list[tuple[str, str, list[int], bytes]], metadata: dict[str, str]):
    """The safetensors layout written by hand, so BF16 needs no torch: u64 header length,
    JSON header padded with spaces to 8 bytes, then the data."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))


def make_safetensors():
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = special_halves(4 * 6).reshape(4, 6)
    bf16 = bf16_bits(rng.standard_normal(7)).reshape(7)
    i64 = np.arange(4, dtype=np.int64)
    path = OUT / "tiny.safetensors"
    write_safetensors(path, [
        ("weight.f32", "F32", [3, 5], f32.tobytes()),
        ("weight.f16", "F16", [4, 6], f16.tobytes()),
        ("weight.bf16", "BF16", [7], bf16.tobytes()),
        ("ids.i64", "I64", [4], i64.tobytes()),
        ("scalar.f32", "F32", [], np.float32(1.5).tobytes()),
    ], {"format": "pt", "note": "Loupe test fixture"})

    # The safetensors package must read the file the same way (it cannot give BF16 to numpy).
    expected = {"weight.bf16": (bf16.astype(np.uint32) << 16).view(np.float32)}
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "note": "Loupe test fixture"}
        for name in ["weight.f32", "weight.f16", "scalar.f32"]:
            expected[name] = f.get_tensor(name).astype(np.float32)
    assert np.array_equal(expected["weight.f32"], f32)
    write_expected(OUT / "tiny.safetensors", {k: expected[k] for k in ["weight.f32", "weight.f16", "weight.bf16", "scalar.f32"]})


def write_expected(path: Path, tensors: dict[str, np.ndarray]):
    """`<path>.expected.f32`: the tensors' float32 values concatenated (little-endian), and
    `<path>.expected.json`: name → {shape, offset (in floats), count}."""
    index, chunks, offset = {}, [], 0
    for name, values in tensors.items():
        values = np.asarray(values, dtype="<f4", order="C")  # (ascontiguousarray would make scalars 1-d)
        index[name] = {"shape": list(values.shape), "offset": offset, "count": int(values.size)}
        chunks.append(values.tobytes())
        offset += values.size
    Path(str(path) + ".expected.f32").write_bytes(b"".join(chunks))
    Path(str(path) + ".expected.json").write_text(json.dumps(index, indent=1) + "\n")


def make_gguf():
    v3 = OUT / "all_types.gguf"
    manifest = write_gguf(v3)
    expected = dequantized_by_gguf(v3)
    assert [m["name"] for m in manifest] == list(expected)
    for m in manifest:
        assert list(expected[m["name"]].shape) == m["shape"], m
    write_expected(v3, expected)
    (OUT / "all_types.gguf.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    # Version 2 has the same layout as 3 (3 only added big-endian files): patch the version.
    data = bytearray(v3.read_bytes())
    assert data[4:8] == struct.pack("<I", 3)
    data[4:8] = struct.pack("<I", 2)
    (OUT / "all_types_v2.gguf").write_bytes(bytes(data))


def make_ggml_types():
    """gguf-py's table of ggml types, so the Swift table can be checked against it."""
    table = {t.name: [int(t), *gguf.GGML_QUANT_SIZES[t]] for t in T if t in gguf.GGML_QUANT_SIZES}
    (OUT / "ggml_types.json").write_text(json.dumps(table, indent=1) + "\n")


def make_smollm2():
    models = Path(os.environ.get("LOUPE_MODELS") or Path.home() / ".cache" / "loupe" / "models")
    path = models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        print(f"skipping smollm2_expected.json: {path} is absent (run scripts/fetch-models.sh)")
        return
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    result = {}
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.0.attn_norm.weight"]:
        t = tensors[name]
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        values = values.reshape(list(reversed(t.shape.tolist())))
        flat = values.reshape(-1)
        result[name] = {
            "type": t.tensor_type.name,
            "shape": list(values.shape),
            "first": [float(v) for v in flat[:48]],
            # The first values of the last row, and whole-tensor sums, catch errors past the start.
            "last_row_first": [float(v) for v in values.reshape(-1, values.shape[-1])[-1][:16]],
            "sum": float(flat.astype(np.float64).sum()),
            "sum_abs": float(np.abs(flat.astype(np.float64)).sum()),
        }
    (OUT / "smollm2_expected.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_gguf()
    make_safetensors()
    make_ggml_types()
    make_smollm2()
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:8d}  {f.name}")
