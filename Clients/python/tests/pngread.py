"""A small PNG reader for the plot tests (8-bit greyscale, RGB and RGBA, not interlaced:
what Chromium and kaleido write), so the tests need no imaging library."""

import struct
import zlib

import numpy as np

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def read_png(data: bytes) -> np.ndarray:
    """The image as a uint8 array of shape (height, width, channels)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    offset, header, compressed = 8, None, bytearray()
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"PNG chunk {kind!r} has a bad checksum")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
        offset += 12 + length
    if header is None:
        raise ValueError("PNG without a header")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    channels = _CHANNELS[colour]
    stride = width * channels
    raw = zlib.decompress(bytes(compressed))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG image data has the wrong length")
    rows = []
    previous = [0] * stride
    for row in range(height):
        start = row * (stride + 1)
        kind = raw[start]
        line = list(raw[start + 1:start + 1 + stride])
        if kind == 2:
            line = [(value + up) & 0xFF for value, up in zip(line, previous)]
        elif kind in (1, 3, 4):
            # Sub, Average and Paeth refer to the decoded pixel to the left: left to right.
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up = previous[i]
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) >> 1
                else:
                    upper_left = previous[i - channels] if i >= channels else 0
                    estimate = left + up - upper_left
                    to_left, to_up, to_upper_left = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
                    if to_left <= to_up and to_left <= to_upper_left:
                        predictor = left
                    elif to_up <= to_upper_left:
                        predictor = up
                    else:
                        predictor = upper_left
                line[i] = (line[i] + predictor) & 0xFF
        elif kind != 0:
            raise ValueError(f"unknown PNG filter {kind}")
        rows.append(line)
        previous = line
    return np.array(rows, dtype=np.uint8).reshape(height, width, channels)
