/// Bounds-checked little-endian reads over a file's bytes. Every failure is a FormatError
/// naming the file and `item`, the thing being read, which the caller keeps up to date.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let file: String
    var offset = 0
    var item: String?

    init(_ bytes: UnsafeRawBufferPointer, file: String) {
        self.bytes = bytes
        self.file = file
    }

    var remaining: Int { bytes.count - offset }

    func error(_ kind: FormatError.Kind, _ message: String) -> FormatError {
        FormatError(kind, file: file, item: item, message)
    }

    /// Throws `.truncated` unless `length` more bytes are there.
    func need(_ length: UInt64) throws {
        guard length <= UInt64(remaining) else {
            throw error(.truncated, "needs \(length) bytes at offset \(offset) but the file has \(remaining) left")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type) throws -> T {
        try need(UInt64(MemoryLayout<T>.size))
        let value = bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: value)
    }

    mutating func readFloat() throws -> Float { Float(bitPattern: try read(UInt32.self)) }
    mutating func readDouble() throws -> Double { Double(bitPattern: try read(UInt64.self)) }

    /// A u64 length followed by that many UTF-8 bytes (invalid sequences become U+FFFD).
    mutating func readString() throws -> String {
        let length = try read(UInt64.self)
        try need(length)
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + Int(length))]), as: UTF8.self)
        offset += Int(length)
        return text
    }

    /// A u64 count of items each at least `minimumSize` bytes long: checked against the bytes
    /// left, so a hostile count cannot drive a huge allocation or a long loop.
    mutating func readCount(minimumSize: Int) throws -> Int {
        let count = try read(UInt64.self)
        guard count <= UInt64(remaining / max(minimumSize, 1)) else {
            throw error(.truncated, "declares \(count) items but only \(remaining) bytes are left")
        }
        return Int(count)
    }
}

/// The product of `factors`, nil on overflow (hostile shapes must not trap).
func checkedProduct(_ factors: [Int]) -> Int? {
    var product = 1
    for factor in factors {
        let (result, overflow) = product.multipliedReportingOverflow(by: factor)
        if overflow { return nil }
        product = result
    }
    return product
}
