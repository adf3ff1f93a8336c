import Foundation

// A weight matrix kept as the quantized blocks of a GGUF file, multiplied by a few rows of
// activations with each weight dequantized on the fly. At batch 1 a product is bound by
// reading the weights: Q4_1 blocks are 0.625 bytes a weight against float32's 4. Each weight
// is decoded to exactly the float32 LoupeFormats' dequantizer gives (ggml's values), so only
// the order of the sums differs from sgemm on the dequantized matrix.

/// IEEE half precision to float32, exactly (subnormals, infinities and NaNs included). Written
/// out rather than using Float16, which Swift lacks on Intel Macs.
@inlinable @inline(__always)
public func floatFromHalf(_ bits: UInt16) -> Float {
    let sign = UInt32(bits & 0x8000) << 16
    let exponent = UInt32(bits >> 10) & 0x1F
    let mantissa = UInt32(bits & 0x3FF)
    switch exponent {
    case 0x1F:
        return Float(bitPattern: sign | 0x7F80_0000 | mantissa << 13)
    case 0:
        // Zero or subnormal: mantissa * 2^-24, exact in float32.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    default:
        return Float(bitPattern: sign | (exponent + 112) << 23 | mantissa << 13)
    }
}

/// The ggml block formats the fused product reads: those of SmolLM2's and Gemma 3's GGUF files.
public enum BlockFormat: Sendable, CaseIterable {
    case q4_0, q4_1, q5_0, q8_0, q4_K, q6_K

    /// Weights per block.
    public var blockSize: Int { self == .q4_K || self == .q6_K ? 256 : 32 }

    /// Bytes per block.
    public var typeSize: Int {
        switch self {
        case .q4_0: Q4_0.typeSize
        case .q4_1: Q4_1.typeSize
        case .q5_0: Q5_0.typeSize
        case .q8_0: Q8_0.typeSize
        case .q4_K: Q4_K.typeSize
        case .q6_K: Q6_K.typeSize
        }
    }
}

/// Block bytes owned by a matrix, 64-byte aligned.
final class BlockBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(count: Int) {
        var raw: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&raw, 64, max(count, 1)) == 0, let raw else { fatalError("out of memory allocating \(count) bytes") }
        pointer = raw
        self.count = count
    }

    deinit { free(pointer) }
}

/// A matrix [rows, columns] stored row-major as quantized blocks (each row `columns /
/// blockSize` blocks), possibly as a stack of parts in different formats (a Q4_K_M file
/// keeps some matrices in Q6_K; `stacked` puts q, k and v on top of one another).
public struct QuantizedMatrix: Sendable {
    /// Consecutive rows in one format.
    struct Part: Sendable {
        let format: BlockFormat
        let rows: Int
        let rowBytes: Int
        let bytes: BlockBytes

        func row(_ r: Int) -> UnsafeRawPointer { UnsafeRawPointer(bytes.pointer + r * rowBytes) }

        /// Rows `rows` of this part times each of the `count` rows of x, into column o of y
        /// for row o. Each format's loop is compiled for it.
        func products(rows: Range<Int>, x: UnsafePointer<Float>, count: Int, y: UnsafeMutablePointer<Float>, yStride: Int) {
            switch format {
            case .q4_0: Q4_0.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            case .q4_1: Q4_1.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            case .q5_0: Q5_0.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            case .q8_0: Q8_0.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            case .q4_K: Q4_K.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            case .q6_K: Q6_K.products(self, rows: rows, x: x, count: count, y: y, yStride: yStride)
            }
        }

        /// Row r as floats.
        func dequantize(_ r: Int, into destination: UnsafeMutablePointer<Float>, columns: Int) {
            switch format {
            case .q4_0: Q4_0.dequantize(row(r), destination, columns)
            case .q4_1: Q4_1.dequantize(row(r), destination, columns)
            case .q5_0: Q5_0.dequantize(row(r), destination, columns)
            case .q8_0: Q8_0.dequantize(row(r), destination, columns)
            case .q4_K: Q4_K.dequantize(row(r), destination, columns)
            case .q6_K: Q6_K.dequantize(row(r), destination, columns)
            }
        }
    }

    public let rows: Int
    public let columns: Int
    let parts: [Part]

    /// A copy of the `rows` rows of blocks at `source`; `columns` must be a whole number of blocks.
    public init(format: BlockFormat, rows: Int, columns: Int, copying source: UnsafeRawPointer) {
        precondition(columns % format.blockSize == 0, "\(columns) columns are not whole \(format) blocks")
        let rowBytes = columns / format.blockSize * format.typeSize
        let bytes = BlockBytes(count: rows * rowBytes)
        bytes.pointer.copyMemory(from: source, byteCount: rows * rowBytes)
        self.init(rows: rows, columns: columns, parts: [Part(format: format, rows: rows, rowBytes: rowBytes, bytes: bytes)])
    }

    private init(rows: Int, columns: Int, parts: [Part]) {
        self.rows = rows
        self.columns = columns
        self.parts = parts
    }

    /// Bytes of blocks held.
    public var byteCount: Int { parts.reduce(0) { $0 + $1.rows * $1.rowBytes } }

    /// Row i of the result is row `order[i]` of this matrix (a matrix of one format).
    public func permutingRows(_ order: [Int]) -> QuantizedMatrix {
        precondition(parts.count == 1 && order.count == rows, "a row permutation needs \(rows) rows of one format")
        let part = parts[0]
        let bytes = BlockBytes(count: rows * part.rowBytes)
        for (to, from) in order.enumerated() {
            (bytes.pointer + to * part.rowBytes).copyMemory(from: part.row(from), byteCount: part.rowBytes)
        }
        return QuantizedMatrix(rows: rows, columns: columns,
                               parts: [Part(format: part.format, rows: rows, rowBytes: part.rowBytes, bytes: bytes)])
    }

    /// The matrices' rows one after another (their blocks are shared, not copied).
    public static func stacked(_ matrices: [QuantizedMatrix]) -> QuantizedMatrix {
        precondition(!matrices.isEmpty && matrices.allSatisfy { $0.columns == matrices[0].columns }, "stacked matrices share their columns")
        return QuantizedMatrix(rows: matrices.reduce(0) { $0 + $1.rows }, columns: matrices[0].columns,
                               parts: matrices.flatMap(\.parts))
    }

    /// Row `r` dequantized into `destination` (`columns` floats), with the kernel's own decoder.
    public func dequantizeRow(_ r: Int, into destination: UnsafeMutablePointer<Float>) {
        let (part, row) = locate(r)
        part.dequantize(row, into: destination, columns: columns)
    }

    private func locate(_ r: Int) -> (Part, Int) {
        precondition(r >= 0 && r < rows, "row \(r) of \(rows)")
        var row = r
        for part in parts {
            if row < part.rows { return (part, row) }
            row -= part.rows
        }
        fatalError("unreachable")
    }

    /// y[i, o] = Σ_j W[o, j] · x[i, j] for `count` rows of x [count, columns] into y
    /// [count, rows], both contiguous. Output rows are split over the cores; every input row
    /// is multiplied by a weight row while its blocks are in the L1 cache.
    public func multiply(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(rows, costPerItem: columns * count) { range in
            var start = 0
            for part in parts {
                let lower = max(range.lowerBound, start), upper = min(range.upperBound, start + part.rows)
                if lower < upper {
                    part.products(rows: (lower - start)..<(upper - start), x: x, count: count, y: y + start, yStride: rows)
                }
                start += part.rows
            }
        }
    }
}

// MARK: - Block decoders

/// One block format: how to decode its 32-weight chunks, as the dequantizer does.
protocol BlockCodec {
    static var blockSize: Int { get }
    static var typeSize: Int { get }
    /// Weights 32c..<32c+32 of the block at `p`, in two halves.
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>)
}

extension BlockCodec {
    static func dequantize(_ row: UnsafeRawPointer, _ destination: UnsafeMutablePointer<Float>, _ columns: Int) {
        for b in 0..<columns / blockSize {
            for c in 0..<blockSize / 32 {
                let (low, high) = chunk(row + b * typeSize, c)
                let out = UnsafeMutableRawPointer(destination + b * blockSize + 32 * c)
                out.storeBytes(of: low, as: SIMD16<Float>.self)
                (out + 64).storeBytes(of: high, as: SIMD16<Float>.self)
            }
        }
    }

    /// Rows `rows` of `part` times each of the `count` rows of x.
    static func products(_ part: QuantizedMatrix.Part, rows: Range<Int>, x: UnsafePointer<Float>, count: Int,
                         y: UnsafeMutablePointer<Float>, yStride: Int) {
        let blocks = part.rowBytes / typeSize, columns = blocks * blockSize
        for o in rows {
            let row = part.row(o)
            for i in 0..<count { y[i * yStride + o] = dot(row, x + i * columns, blocks) }
        }
    }

    @inline(__always)
    static func dot(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ blocks: Int) -> Float {
        var sum0 = SIMD16<Float>(), sum1 = SIMD16<Float>()
        for b in 0..<blocks {
            let p = row + b * typeSize, xs = UnsafeRawPointer(x + b * blockSize)
            for c in 0..<blockSize / 32 {
                let (low, high) = chunk(p, c)
                sum0 = sum0.addingProduct(low, xs.loadUnaligned(fromByteOffset: 128 * c, as: SIMD16<Float>.self))
                sum1 = sum1.addingProduct(high, xs.loadUnaligned(fromByteOffset: 128 * c + 64, as: SIMD16<Float>.self))
            }
        }
        return (sum0 + sum1).sum()
    }
}

@inline(__always)
private func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    floatFromHalf(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

@inline(__always)
private func bytes16(_ p: UnsafeRawPointer, _ offset: Int) -> SIMD16<UInt8> {
    p.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt8>.self)
}

/// Small whole numbers to float32, exactly.
@inline(__always)
private func floats(_ v: SIMD16<UInt8>) -> SIMD16<Float> { SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: v)) }

@inline(__always)
private func floats(_ v: SIMD16<Int8>) -> SIMD16<Float> { SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: v)) }

/// Bit j of `bits` as 16 lanes (lane j: bit j + from), moved to bit `to`.
@inline(__always)
private func bitLanes(_ bits: UInt32, from: UInt32, to: UInt8) -> SIMD16<UInt8> {
    let lanes = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) &+ from
    return SIMD16<UInt8>(truncatingIfNeeded: (SIMD16<UInt32>(repeating: bits) &>> lanes) & 1) &<< to
}

// Each decoder below mirrors its namesake in LoupeFormats/Dequantize.swift, rounding the same
// products in the same order.

/// Q4_0: (q - 8) * d.
private enum Q4_0: BlockCodec {
    static let blockSize = 32, typeSize = 18
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let d = half(p, 0), q = bytes16(p, 2)
        return ((floats(q & 0xF) - 8) * d, (floats(q &>> 4) - 8) * d)
    }
}

/// Q4_1: d * q + m.
private enum Q4_1: BlockCodec {
    static let blockSize = 32, typeSize = 20
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let d = half(p, 0), m = half(p, 2), q = bytes16(p, 4)
        return (d * floats(q & 0xF) + m, d * floats(q &>> 4) + m)
    }
}

/// Q5_0: (q - 16) * d, q's fifth bit from the 32 high bits.
private enum Q5_0: BlockCodec {
    static let blockSize = 32, typeSize = 22
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let d = half(p, 0), q = bytes16(p, 6)
        let high = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        let low = (q & 0xF) | bitLanes(high, from: 0, to: 4), top = (q &>> 4) | bitLanes(high, from: 16, to: 4)
        return ((floats(low) - 16) * d, (floats(top) - 16) * d)
    }
}

/// Q8_0: q * d.
private enum Q8_0: BlockCodec {
    static let blockSize = 32, typeSize = 34
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let d = half(p, 0)
        let low = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)
        let high = p.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)
        return (floats(low) * d, floats(high) * d)
    }
}

/// Q4_K: (d * scale) * q - (dmin * min), sub-block c's 6-bit scale and min.
private enum Q4_K: BlockCodec {
    static let blockSize = 256, typeSize = 144
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let scales = p + 4
        @inline(__always) func byte(_ i: Int) -> UInt8 { scales.load(fromByteOffset: i, as: UInt8.self) }
        let (scale, min) = c < 4
            ? (byte(c) & 63, byte(c + 4) & 63)
            : ((byte(c + 4) & 0xF) | (byte(c - 4) >> 6) << 4, (byte(c + 4) >> 4) | (byte(c) >> 6) << 4)
        let d = half(p, 0) * Float(scale), m = half(p, 2) * Float(min)
        let offset = 16 + 32 * (c >> 1)
        var low = bytes16(p, offset), high = bytes16(p, offset + 16)
        if c & 1 == 0 {
            low &= 0xF
            high &= 0xF
        } else {
            low &>>= 4
            high &>>= 4
        }
        return (d * floats(low) - m, d * floats(high) - m)
    }
}

/// Q6_K: (d * scale) * (q - 32), a signed scale per 16 weights; chunk c is weights
/// 32k..<32k+32 of half c / 4 (k = c % 4).
private enum Q6_K: BlockCodec {
    static let blockSize = 256, typeSize = 210
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let part = c >> 2, k = c & 3
        let ql = 64 * part + 32 * (k & 1), qh = 128 + 32 * part, scales = 192 + 8 * part + 2 * k
        let shift = UInt8(4 * (k >> 1)), highShift = UInt8(2 * k)
        @inline(__always) func weights(_ l: Int) -> SIMD16<Float> {
            let q = (bytes16(p, ql + l) &>> shift) & 0xF | ((bytes16(p, qh + l) &>> highShift) & 3) &<< 4
            return floats(q) - 32
        }
        let d = half(p, 208)
        let scale0 = d * Float(p.load(fromByteOffset: scales, as: Int8.self))
        let scale1 = d * Float(p.load(fromByteOffset: scales + 1, as: Int8.self))
        return (scale0 * weights(0), scale1 * weights(16))
    }
}
