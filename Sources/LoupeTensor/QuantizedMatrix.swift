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

    /// x's `count` elements (whole blocks) in the order the decoder gives each block's weights.
    func reorder(_ x: UnsafePointer<Float>, count: Int, into destination: UnsafeMutablePointer<Float>) {
        let order = self.order
        for start in stride(from: 0, to: count, by: order.count) {
            for (position, element) in order.enumerated() { destination[start + position] = x[start + element] }
        }
    }

    /// Position p of a block's decoded weights is element order[p].
    private var order: [Int] {
        switch self {
        case .q4_0: Q4_0.order
        case .q4_1: Q4_1.order
        case .q5_0: Q5_0.order
        case .q8_0: Q8_0.order
        case .q4_K: Q4_K.order
        case .q6_K: Q6_K.order
        }
    }

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

        /// Rows `rows` of this part times each of the `count` rows of x (in the format's
        /// order), into column o of y for row o. Each format's loop is compiled for it.
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
    /// [count, rows], both contiguous. The decoders give a block's weights in the order its
    /// bytes hold them, so x is first put in that order (once per call, not per row), its rows
    /// padded with zeros to a whole number of tiles. Output rows are split over the cores; each
    /// weight is decoded once per tile of input rows while its block is in the L1 cache.
    public func multiply(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        let formats = parts.map(\.format)
        let padded = (count + Tile.rows - 1) / Tile.rows * Tile.rows
        let size = padded * columns
        withUnsafeTemporaryAllocation(of: Float.self, capacity: formats.count * size) { reordered in
            for (index, format) in formats.enumerated() {
                let destination = reordered.baseAddress! + index * size
                format.reorder(x, count: count * columns, into: destination)
                (destination + count * columns).initialize(repeating: 0, count: size - count * columns)
            }
            let inputs = UnsafePointer(reordered.baseAddress!)
            Parallel.forEachChunk(rows, costPerItem: columns * count) { range in
                var start = 0
                for (index, part) in parts.enumerated() {
                    let lower = max(range.lowerBound, start), upper = min(range.upperBound, start + part.rows)
                    if lower < upper {
                        part.products(rows: (lower - start)..<(upper - start), x: inputs + index * size, count: count,
                                      y: y + start, yStride: rows)
                    }
                    start += part.rows
                }
            }
        }
    }
}

// MARK: - Block decoders

/// One block format. `weights` hands out a block's weights eight at a time (group g:
/// positions 8g..<8g+8), decoded as the dequantizer does, in the order that the block's bytes
/// give them most cheaply: `order` says which element each position is.
protocol BlockCodec {
    static var blockSize: Int { get }
    static var typeSize: Int { get }
    static var order: [Int] { get }
    static func weights(_ p: UnsafeRawPointer, _ body: (_ group: Int, _ weights: SIMD8<Float>) -> Void)
}

extension BlockCodec {
    /// The order of a block whose group g, lane k is element `element(g, k)`.
    static func ordering(_ element: (_ group: Int, _ lane: Int) -> Int) -> [Int] {
        (0..<blockSize).map { element($0 / 8, $0 % 8) }
    }

    /// A row of `columns` weights in natural order.
    static func dequantize(_ row: UnsafeRawPointer, _ destination: UnsafeMutablePointer<Float>, _ columns: Int) {
        for b in 0..<columns / blockSize {
            let out = destination + b * blockSize
            weights(row + b * typeSize) { group, w in
                for lane in 0..<8 { out[order[8 * group + lane]] = w[lane] }
            }
        }
    }

    /// Rows `rows` of `part` times each of the `count` rows of x (reordered, padded to whole
    /// tiles: a tile of one row and three of zeros runs faster than one row alone).
    static func products(_ part: QuantizedMatrix.Part, rows: Range<Int>, x: UnsafePointer<Float>, count: Int,
                         y: UnsafeMutablePointer<Float>, yStride: Int) {
        let blocks = part.rowBytes / typeSize, columns = blocks * blockSize
        for first in stride(from: 0, to: count, by: Tile.rows) {
            let input = x + first * columns
            for o in rows {
                let row = part.row(o)
                var tile = Tile()
                for b in 0..<blocks {
                    let xs = input + b * blockSize
                    weights(row + b * typeSize) { group, w in tile.add(group, w, xs, stride: columns) }
                }
                for i in 0..<min(Tile.rows, count - first) { y[(first + i) * yStride + o] = tile.total(i) }
            }
        }
    }
}

/// The sums of four input rows against one weight row, two apiece: each decoded weight is
/// used four times.
struct Tile {
    static let rows = 4
    var a0 = SIMD8<Float>(), b0 = SIMD8<Float>(), a1 = SIMD8<Float>(), b1 = SIMD8<Float>()
    var a2 = SIMD8<Float>(), b2 = SIMD8<Float>(), a3 = SIMD8<Float>(), b3 = SIMD8<Float>()

    @inline(__always)
    mutating func add(_ group: Int, _ w: SIMD8<Float>, _ x: UnsafePointer<Float>, stride: Int) {
        let p = x + 8 * group
        @inline(__always) func load(_ i: Int) -> SIMD8<Float> { UnsafeRawPointer(p + i * stride).loadUnaligned(as: SIMD8<Float>.self) }
        if group & 1 == 0 {
            a0 = a0.addingProduct(w, load(0)); a1 = a1.addingProduct(w, load(1))
            a2 = a2.addingProduct(w, load(2)); a3 = a3.addingProduct(w, load(3))
        } else {
            b0 = b0.addingProduct(w, load(0)); b1 = b1.addingProduct(w, load(1))
            b2 = b2.addingProduct(w, load(2)); b3 = b3.addingProduct(w, load(3))
        }
    }

    @inline(__always)
    func total(_ i: Int) -> Float {
        switch i {
        case 0: (a0 + b0).sum()
        case 1: (a1 + b1).sum()
        case 2: (a2 + b2).sum()
        default: (a3 + b3).sum()
        }
    }
}

@inline(__always)
private func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    floatFromHalf(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

@inline(__always)
private func lanes(_ p: UnsafeRawPointer, _ offset: Int) -> SIMD8<UInt32> {
    p.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt32>.self)
}

/// The low and high nibbles of 16 bytes, four to a lane: lane k < 4 holds elements 4k..<4k+4,
/// lane k >= 4 elements 16 + 4(k - 4)..<. (Element j's low nibble is byte j's, j + 16's its high.)
@inline(__always)
private func nibbles(_ p: UnsafeRawPointer, _ offset: Int) -> SIMD8<UInt32> {
    let w = p.loadUnaligned(fromByteOffset: offset, as: SIMD4<UInt32>.self)
    return SIMD8(lowHalf: w & 0x0F0F_0F0F, highHalf: (w &>> 4) & 0x0F0F_0F0F)
}

/// Element of group g (byte g of each lane), lane k, for `nibbles`.
private func nibbleElement(_ g: Int, _ k: Int) -> Int { k < 4 ? 4 * k + g : 16 + 4 * (k - 4) + g }

/// Byte `b` of every lane, a whole number below 2^23, minus `offset`, exactly as a float: the
/// bits 2^23 + n read as a float are 2^23 + n (integer conversions do not vectorise).
@inline(__always)
private func floats(_ v: SIMD8<UInt32>, byte b: UInt32, minus offset: Float = 0) -> SIMD8<Float> {
    unsafeBitCast(((v &>> (8 * b)) & 0xFF) | 0x4B00_0000, to: SIMD8<Float>.self) - (8_388_608 + offset)
}

// Each decoder below mirrors its namesake in LoupeFormats/Dequantize.swift, rounding the same
// products in the same order.

/// Q4_0: (q - 8) * d.
private enum Q4_0: BlockCodec {
    static let blockSize = 32, typeSize = 18
    static let order = ordering(nibbleElement)
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 0), q = nibbles(p, 2)
        for g in 0..<4 { body(g, floats(q, byte: UInt32(g), minus: 8) * d) }
    }
}

/// Q4_1: d * q + m.
private enum Q4_1: BlockCodec {
    static let blockSize = 32, typeSize = 20
    static let order = ordering(nibbleElement)
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 0), m = half(p, 2), q = nibbles(p, 4)
        for g in 0..<4 { body(g, d * floats(q, byte: UInt32(g)) + m) }
    }
}

/// Q5_0: (q - 16) * d, q's fifth bit (element j: bit j of the 32 high bits).
private enum Q5_0: BlockCodec {
    static let blockSize = 32, typeSize = 22
    static let order = ordering(nibbleElement)
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 0), q = nibbles(p, 6)
        let high = SIMD8<UInt32>(repeating: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)))
        let elements = SIMD8<UInt32>(0, 4, 8, 12, 16, 20, 24, 28)
        for g in 0..<4 {
            let fifth = ((high &>> (elements &+ UInt32(g))) & 1) &<< (8 * UInt32(g) + 4)
            body(g, floats(q | fifth, byte: UInt32(g), minus: 16) * d)
        }
    }
}

/// Q8_0: q * d, q a signed byte.
private enum Q8_0: BlockCodec {
    static let blockSize = 32, typeSize = 34
    static let order = ordering { g, k in 4 * k + g }
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 0), q = lanes(p, 2)
        for g in 0..<4 {
            // Byte g sign-extended, then 1.5 · 2^23 + n read as a float, exactly.
            let n = unsafeBitCast(q &<< UInt32(24 - 8 * g), to: SIMD8<Int32>.self) &>> 24
            body(g, (unsafeBitCast(n &+ 0x4B40_0000, to: SIMD8<Float>.self) - 12_582_912) * d)
        }
    }
}

/// Q4_K: (d * scale) * q - (dmin * min), each sub-block of 32 its 6-bit scale and min; the
/// 32 bytes of pair i hold sub-block 2i in their low nibbles and 2i + 1 in their high ones.
private enum Q4_K: BlockCodec {
    static let blockSize = 256, typeSize = 144
    static let order = ordering { g, k in 32 * (g / 4) + 4 * k + g % 4 }
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 0), dmin = half(p, 2)
        @inline(__always) func byte(_ i: Int) -> UInt8 { p.load(fromByteOffset: 4 + i, as: UInt8.self) }
        for pair in 0..<4 {
            let q = lanes(p, 16 + 32 * pair)
            for sub in 0..<2 {
                let j = 2 * pair + sub
                let (scale, min) = j < 4
                    ? (byte(j) & 63, byte(j + 4) & 63)
                    : ((byte(j + 4) & 0xF) | (byte(j - 4) >> 6) << 4, (byte(j + 4) >> 4) | (byte(j) >> 6) << 4)
                let scaled = d * Float(scale), offset = dmin * Float(min)
                let v = (q &>> UInt32(4 * sub)) & 0x0F0F_0F0F
                for g in 0..<4 { body(4 * j + g, scaled * floats(v, byte: UInt32(g)) - offset) }
            }
        }
    }
}

/// Q6_K: (d * scale) * (q - 32), a signed scale per 16 weights. Each half of 128 weights: 64
/// bytes of low nibbles (ql), 32 of 2-bit highs (qh); weight 32k + l of the half (k < 4)
/// takes byte l (k even) or l + 32 (k odd) of ql, its high nibble for k >= 2, and bits 2k of
/// qh's byte l.
private enum Q6_K: BlockCodec {
    static let blockSize = 256, typeSize = 210
    static let order = ordering { g, k in 128 * (g / 16) + 32 * (g / 4 % 4) + 4 * k + g % 4 }
    @inline(__always)
    static func weights(_ p: UnsafeRawPointer, _ body: (Int, SIMD8<Float>) -> Void) {
        let d = half(p, 208)
        for part in 0..<2 {
            let low = lanes(p, 64 * part), high = lanes(p, 64 * part + 32), bits = lanes(p, 128 + 32 * part)
            for k in 0..<4 {
                let nibble = ((k & 1 == 0 ? low : high) &>> UInt32(4 * (k >> 1))) & 0x0F0F_0F0F
                let q = nibble | ((bits &>> UInt32(2 * k)) & 0x0303_0303) &<< 4
                // Weights 0..<16 of the 32 (lanes 0..<4) take one scale, 16..<32 the next.
                let scales = 192 + 8 * part + 2 * k
                let first = d * Float(p.load(fromByteOffset: scales, as: Int8.self))
                let second = d * Float(p.load(fromByteOffset: scales + 1, as: Int8.self))
                let scale = SIMD8(lowHalf: SIMD4(repeating: first), highHalf: SIMD4(repeating: second))
                for g in 0..<4 { body(16 * part + 4 * k + g, scale * floats(q, byte: UInt32(g), minus: 32)) }
            }
        }
    }
}
