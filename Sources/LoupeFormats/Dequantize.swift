import LoupeTensor

/// Decodes `blocks` consecutive blocks from `source` into `blocks * blockSize` floats.
typealias BlockDecoder = (_ source: UnsafeRawPointer, _ destination: UnsafeMutablePointer<Float>, _ blocks: Int) -> Void

/// One stored element type's decoder and block layout.
struct BlockConverter {
    let blockSize: Int
    let typeSize: Int
    let decode: BlockDecoder
    /// The data is already float32: a tensor can borrow it in place when it is aligned.
    var isFloat32 = false

    /// The tensor of `shape` stored `offset` bytes into `file`, which the caller has bounds-checked.
    /// Float32 data is not copied: the tensor borrows the mapping (privately: writes to it never
    /// reach the file) and keeps it alive. Converted data's pages are handed back once read: a
    /// borrowed tensor keeps the whole mapping alive, and without this every page of a quantized
    /// file stayed resident beside its float32 copy (Gemma 3's 247 MB GGUF).
    func tensor(shape: [Int], at offset: Int, in file: MappedFile) -> Tensor {
        let source = file.pointer(at: offset)
        if isFloat32, Int(bitPattern: source) % MemoryLayout<Float>.alignment == 0 {
            let floats = UnsafeMutablePointer(mutating: source.assumingMemoryBound(to: Float.self))
            return Tensor(storage: TensorStorage(borrowing: floats, count: shape.reduce(1, *), owner: file), shape: shape)
        }
        let converted = tensor(shape: shape, from: source)
        file.release(at: offset, count: shape.reduce(1, *) / blockSize * typeSize)
        return converted
    }

    /// A new float32 tensor of `shape` decoded from `source` (which holds the whole tensor).
    /// Large tensors are split over all cores.
    func tensor(shape: [Int], from source: UnsafeRawPointer) -> Tensor {
        let count = shape.reduce(1, *)
        let buffer = FloatBuffer(count: count)
        let destination = buffer.pointer
        Parallel.forEachChunk(count / blockSize, costPerItem: blockSize) { blocks in
            decode(source + blocks.lowerBound * typeSize, destination + blocks.lowerBound * blockSize, blocks.count)
        }
        return Tensor(storage: TensorStorage(borrowing: destination, count: count, owner: buffer), shape: shape)
    }
}

/// ggml's block decoders, written to give bit-for-bit the float32 values of ggml-quants.c's
/// `dequantize_row_*` and gguf-py's `quants.py`: each scale is widened to float32 first and the
/// products and sums are rounded in the same order.
enum Dequantize {
    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        floatFromHalf(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always)
    static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 { p.load(fromByteOffset: offset, as: UInt8.self) }

    static func f32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n * 4)
    }

    static func f16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { dst[i] = half(src, 2 * i) }
    }

    static func bf16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n {
            let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
            dst[i] = Float(bitPattern: UInt32(bits) << 16)
        }
    }

    /// Q4_0: d (f16), 16 bytes of 4-bit q; element j is the low nibble of byte j, element
    /// j + 16 its high nibble; x = (q - 8) * d.
    static func q4_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 18, y = dst + b * 32
            let d = half(p, 0)
            for j in 0..<16 {
                let q = byte(p, 2 + j)
                y[j] = Float(Int32(q & 0xF) - 8) * d
                y[j + 16] = Float(Int32(q >> 4) - 8) * d
            }
        }
    }

    /// Q4_1: d, m (f16), 16 bytes of 4-bit q as in Q4_0; x = d * q + m.
    static func q4_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 20, y = dst + b * 32
            let d = half(p, 0), m = half(p, 2)
            for j in 0..<16 {
                let q = byte(p, 4 + j)
                y[j] = d * Float(q & 0xF) + m
                y[j + 16] = d * Float(q >> 4) + m
            }
        }
    }

    /// Q5_0: d (f16), 32 high bits (u32, bit j for element j), 16 bytes of low nibbles as in
    /// Q4_0; x = (q - 16) * d.
    static func q5_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 22, y = dst + b * 32
            let d = half(p, 0)
            let high = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
            for j in 0..<16 {
                let q = UInt32(byte(p, 6 + j))
                let lo = (q & 0xF) | ((high >> j) & 1) << 4
                let hi = (q >> 4) | ((high >> (j + 16)) & 1) << 4
                y[j] = Float(Int32(lo) - 16) * d
                y[j + 16] = Float(Int32(hi) - 16) * d
            }
        }
    }

    /// Q5_1: d, m (f16), high bits and low nibbles as in Q5_0; x = d * q + m.
    static func q5_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 24, y = dst + b * 32
            let d = half(p, 0), m = half(p, 2)
            let high = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            for j in 0..<16 {
                let q = UInt32(byte(p, 8 + j))
                let lo = (q & 0xF) | ((high >> j) & 1) << 4
                let hi = (q >> 4) | ((high >> (j + 16)) & 1) << 4
                y[j] = d * Float(lo) + m
                y[j + 16] = d * Float(hi) + m
            }
        }
    }

    /// Q8_0: d (f16), 32 signed bytes; x = q * d.
    static func q8_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 34, y = dst + b * 32
            let d = half(p, 0)
            for j in 0..<32 { y[j] = Float(Int8(bitPattern: byte(p, 2 + j))) * d }
        }
    }

    /// The 6-bit scale and min of sub-block `j` (0..<8) from the 12 packed bytes at `s`
    /// (ggml's `get_scale_min_k4`).
    @inline(__always)
    static func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (scale: Float, min: Float) {
        if j < 4 {
            return (Float(byte(s, j) & 63), Float(byte(s, j + 4) & 63))
        }
        let scale = (byte(s, j + 4) & 0xF) | (byte(s, j - 4) >> 6) << 4
        let min = (byte(s, j + 4) >> 4) | (byte(s, j) >> 6) << 4
        return (Float(scale), Float(min))
    }

    /// Q4_K: d, dmin (f16), 12 bytes of packed 6-bit scales and mins for 8 sub-blocks of 32,
    /// 128 bytes of nibbles: each 32-byte run holds two sub-blocks, low nibbles first;
    /// x = (d * scale) * q - (dmin * min).
    static func q4_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 144, y = dst + b * 256
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4, qs = p + 16
            for pair in 0..<4 {
                let (sc1, m1) = scaleMin(scales, 2 * pair), (sc2, m2) = scaleMin(scales, 2 * pair + 1)
                let d1 = d * sc1, dm1 = dmin * m1, d2 = d * sc2, dm2 = dmin * m2
                let q = qs + 32 * pair, out = y + 64 * pair
                for l in 0..<32 {
                    let v = byte(q, l)
                    out[l] = d1 * Float(v & 0xF) - dm1
                    out[l + 32] = d2 * Float(v >> 4) - dm2
                }
            }
        }
    }

    /// Q5_K: as Q4_K, plus 32 bytes of high bits (bit i of byte l for element 32 * i + l)
    /// before the nibbles.
    static func q5_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 176, y = dst + b * 256
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4, qh = p + 16, qs = p + 48
            for pair in 0..<4 {
                let (sc1, m1) = scaleMin(scales, 2 * pair), (sc2, m2) = scaleMin(scales, 2 * pair + 1)
                let d1 = d * sc1, dm1 = dmin * m1, d2 = d * sc2, dm2 = dmin * m2
                let q = qs + 32 * pair, out = y + 64 * pair
                for l in 0..<32 {
                    let v = byte(q, l), h = byte(qh, l)
                    let lo = (v & 0xF) | ((h >> (2 * pair)) & 1) << 4
                    let hi = (v >> 4) | ((h >> (2 * pair + 1)) & 1) << 4
                    out[l] = d1 * Float(lo) - dm1
                    out[l + 32] = d2 * Float(hi) - dm2
                }
            }
        }
    }

    /// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed 8-bit scales (one
    /// per 16 elements), d (f16). Each half of 128 elements uses 64 nibble bytes and 32 high
    /// bytes; x = (d * scale) * (q - 32).
    static func q6_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 210, y = dst + b * 256
            let d = half(p, 208)
            for part in 0..<2 {
                let ql = p + 64 * part, qh = p + 128 + 32 * part, out = y + 128 * part
                let scales = p + 192 + 8 * part
                for l in 0..<32 {
                    let low1 = byte(ql, l), low2 = byte(ql, l + 32), h = byte(qh, l)
                    let q1 = Int32(low1 & 0xF | (h & 3) << 4) - 32
                    let q2 = Int32(low2 & 0xF | ((h >> 2) & 3) << 4) - 32
                    let q3 = Int32(low1 >> 4 | ((h >> 4) & 3) << 4) - 32
                    let q4 = Int32(low2 >> 4 | ((h >> 6) & 3) << 4) - 32
                    let s = l / 16
                    out[l] = d * Float(Int8(bitPattern: byte(scales, s))) * Float(q1)
                    out[l + 32] = d * Float(Int8(bitPattern: byte(scales, s + 2))) * Float(q2)
                    out[l + 64] = d * Float(Int8(bitPattern: byte(scales, s + 4))) * Float(q3)
                    out[l + 96] = d * Float(Int8(bitPattern: byte(scales, s + 6))) * Float(q4)
                }
            }
        }
    }
}
