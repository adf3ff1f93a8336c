import LoupeTensor

/// A tensor as it travels: `{dtype, shape, data}` with `data` little-endian bytes, either
/// inline (MessagePack bin) or in an extra frame of the same ZeroMQ message, referenced
/// as `{frame: N}` (1 is the first frame after the map).
public struct WireTensor: Sendable, Equatable {
    public enum DType: String, Sendable, CaseIterable {
        case f32, i32, i64
        public var size: Int { self == .i64 ? 8 : 4 }
    }

    public static let maxRank = 8

    public let dtype: DType
    public let shape: [Int]
    public let data: [UInt8]

    public var count: Int { shape.reduce(1, *) }

    /// Checks that dtype, shape and data agree.
    public init(dtype: DType, shape: [Int], data: [UInt8]) throws(WireError) {
        guard shape.count <= Self.maxRank else {
            throw WireError(.badTensor, "tensor of rank \(shape.count) exceeds the limit of \(Self.maxRank)")
        }
        guard shape.allSatisfy({ $0 >= 0 }) else { throw WireError(.badTensor, "tensor shape \(shape) has a negative dimension") }
        var elements = 1
        for dim in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
            guard !overflow else { throw WireError(.shapeMismatch, "tensor shape \(shape) is too large") }
            elements = product
        }
        let needed = elements.multipliedReportingOverflow(by: dtype.size)
        guard !needed.overflow, needed.partialValue == data.count else {
            throw WireError(.shapeMismatch, "tensor of shape \(shape) and dtype \(dtype.rawValue) needs \(elements * dtype.size) bytes, got \(data.count)")
        }
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    /// A float32 tensor's values (any strides) in row-major order.
    public init(_ tensor: Tensor) {
        let values = tensor.toArray()
        self.dtype = .f32
        self.shape = tensor.shape
        self.data = values.withUnsafeBytes { raw in Self.littleEndian(raw, width: 4) }
    }

    public init(shape: [Int], floats: [Float]) throws(WireError) {
        try self.init(dtype: .f32, shape: shape, data: floats.withUnsafeBytes { Self.littleEndian($0, width: 4) })
    }

    /// Reads `{dtype, shape, data}`; `attachments` are the message's extra frames.
    public init(_ value: MessageValue, attachments: [[UInt8]] = []) throws(WireError) {
        guard let fields = value.mapValue else { throw WireError(.badTensor, "a tensor must be a map, got \(value.typeName)") }
        guard let name = fields["dtype"]?.stringValue, let dtype = DType(rawValue: name) else {
            throw WireError(.badTensor, "tensor dtype must be one of \(DType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let dims = fields["shape"]?.arrayValue else { throw WireError(.badTensor, "tensor shape must be an array of integers") }
        var shape = [Int]()
        for dim in dims {
            guard let size = dim.intValue else { throw WireError(.badTensor, "tensor shape must be an array of integers") }
            shape.append(size)
        }
        let data: [UInt8]
        switch fields["data"] {
        case .binary(let bytes)?: data = bytes
        case .map(let reference)?:
            guard let frame = reference["frame"]?.intValue, frame >= 1, frame <= attachments.count else {
                throw WireError(.badTensor, "tensor data refers to a frame the message does not have (it has \(attachments.count) extra frames)")
            }
            data = attachments[frame - 1]
        default: throw WireError(.badTensor, "tensor data must be binary or {frame: N}")
        }
        try self.init(dtype: dtype, shape: shape, data: data)
    }

    /// `{dtype, shape, data}` with the bytes inline.
    public var messageValue: MessageValue {
        ["dtype": .string(dtype.rawValue), "shape": MessageValue(shape), "data": .binary(data)]
    }

    /// `{dtype, shape, data: {frame: N}}`, the bytes to be sent as frame N.
    public func messageValue(frame: Int) -> MessageValue {
        ["dtype": .string(dtype.rawValue), "shape": MessageValue(shape), "data": ["frame": MessageValue(frame)]]
    }

    public func floats() throws(WireError) -> [Float] {
        guard dtype == .f32 else { throw WireError(.badTensor, "expected an f32 tensor, got \(dtype.rawValue)") }
        return Self.hostOrder(data, as: UInt32.self).map { Float(bitPattern: $0) }
    }

    /// Integer tensors (token ids) of either width.
    public func integers() throws(WireError) -> [Int] {
        switch dtype {
        case .i32: return Self.hostOrder(data, as: UInt32.self).map { Int(Int32(bitPattern: $0)) }
        case .i64: return Self.hostOrder(data, as: UInt64.self).map { Int(Int64(bitPattern: $0)) }
        case .f32: throw WireError(.badTensor, "expected an integer tensor, got f32")
        }
    }

    public func tensor() throws(WireError) -> Tensor {
        Tensor(shape: shape, values: try floats())
    }

    private static func hostOrder<T: FixedWidthInteger>(_ bytes: [UInt8], as: T.Type) -> [T] {
        let count = bytes.count / MemoryLayout<T>.size
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            bytes.withUnsafeBytes { raw in
                for index in 0..<count {
                    buffer[index] = T(littleEndian: raw.loadUnaligned(fromByteOffset: index * MemoryLayout<T>.size, as: T.self))
                }
            }
            initialized = count
        }
    }

    private static func littleEndian(_ raw: UnsafeRawBufferPointer, width: Int) -> [UInt8] {
        var bytes = Array(raw)
        #if _endian(big)
        for start in stride(from: 0, to: bytes.count, by: width) { bytes[start..<start + width].reverse() }
        #endif
        return bytes
    }
}
