import LoupeTensor

/// A GGUF file (versions 2 and 3), memory-mapped. The metadata and tensor table are parsed and
/// checked when the file is opened; tensor data is converted to float32 when asked for.
public final class GGUFFile: WeightSource, @unchecked Sendable {
    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]

    private struct TensorInfo {
        let name: String
        let shape: [Int]       // row-major: GGUF's ne[] reversed
        let typeID: UInt32
        let type: GGMLType?    // nil for an id Loupe does not know
        var offset: Int        // in the file (relative to the data section until that is known)
    }

    private let file: MappedFile
    private let infos: [TensorInfo]
    private let index: [String: Int]

    /// "GGUF" read as a little-endian u32.
    private static let magic: UInt32 = 0x4655_4747
    /// ggml's GGML_MAX_DIMS.
    private static let maximumRank = 4
    /// Arrays inside arrays are legal; real files nest one deep. The cap keeps hostile
    /// nesting from exhausting the stack.
    private static let maximumNesting = 8
    /// More metadata values (keys and array elements) than any real file holds: a vocabulary
    /// of 262,144 tokens with its scores and types and 500,000 merges is about 1.3 million.
    /// Each takes 24 bytes in memory however few it took in the file (a bool array, one byte
    /// each), so a hostile count would otherwise cost gigabytes.
    static let maximumMetadataValues = 1 << 24
    /// More tensors than any real model has (thousands; a mixture of experts with one tensor
    /// per expert tens of thousands).
    static let maximumTensors = 1 << 20

    /// `control`: the load reading it, checked before each tensor is converted.
    public init(path: String, control: LoadControl? = nil) throws {
        self.path = path
        file = try MappedFile(path: path, control: control)
        var reader = ByteReader(file.bytes, file: path)

        reader.item = "magic"
        let magic = try reader.read(UInt32.self)
        guard magic == Self.magic else {
            throw reader.error(.badMagic, "not a GGUF file (magic \(String(magic, radix: 16)), expected 46554747 \"GGUF\")")
        }
        reader.item = "version"
        let version = try reader.read(UInt32.self)
        guard version == 2 || version == 3 else {
            let hint = (2...3).contains(version.byteSwapped) ? " (a big-endian file?)" : version == 1 ? " (the 2023 draft format)" : ""
            throw reader.error(.unsupportedVersion, "GGUF version \(version)\(hint); Loupe reads versions 2 and 3")
        }
        self.version = Int(version)

        // Hostile counts are harmless here: the loops below stop at the first read past the
        // end, and capacity is reserved only for what the remaining bytes could hold.
        reader.item = "tensor count"
        let tensorCount = try reader.read(UInt64.self)
        reader.item = "metadata count"
        let metadataCount = try reader.read(UInt64.self)
        guard tensorCount <= UInt64(Self.maximumTensors) else {
            reader.item = "tensor count"
            throw reader.error(.badValue, "\(tensorCount) tensors is more than the \(Self.maximumTensors) Loupe reads")
        }
        guard metadataCount <= UInt64(Self.maximumMetadataValues) else {
            throw reader.error(.badValue, "\(metadataCount) keys is more than the \(Self.maximumMetadataValues) metadata values Loupe reads")
        }

        var metadata: [String: GGUFValue] = [:]
        // A key-value pair is at least 8 (key length) + 4 (type) + 1 (value) bytes.
        metadata.reserveCapacity(Int(min(metadataCount, UInt64(reader.remaining / 13))))
        var values = Int(metadataCount)
        for i in 0..<metadataCount {
            reader.item = "metadata key #\(i)"
            let key = try reader.readString()
            reader.item = key
            let type = try reader.read(UInt32.self)
            let value = try Self.readValue(type: type, from: &reader, depth: 0, values: &values)
            guard metadata.updateValue(value, forKey: key) == nil else { throw reader.error(.badValue, "duplicate metadata key") }
        }
        self.metadata = metadata

        reader.item = "general.alignment"
        var alignment = 32
        if let value = metadata["general.alignment"] {
            guard let a = value.intValue, a > 0, a & (a - 1) == 0 else {
                throw reader.error(.badValue, "alignment must be a power of two, found \(value)")
            }
            alignment = a
        }

        var infos: [TensorInfo] = []
        // A tensor info is at least 8 (name length) + 4 (rank) + 4 (type) + 8 (offset) bytes.
        infos.reserveCapacity(Int(min(tensorCount, UInt64(reader.remaining / 24))))
        for i in 0..<tensorCount {
            reader.item = "tensor info #\(i)"
            let name = try reader.readString()
            reader.item = name
            let rank = try reader.read(UInt32.self)
            guard rank <= Self.maximumRank else { throw reader.error(.badValue, "rank \(rank) exceeds ggml's \(Self.maximumRank)") }
            var shape: [Int] = []
            for _ in 0..<rank {
                let dimension = try reader.read(UInt64.self)
                guard dimension <= UInt64(Int32.max) else { throw reader.error(.badValue, "dimension \(dimension) is absurd") }
                shape.insert(Int(dimension), at: 0)
            }
            // Even a tensor with no data (a zero dimension) must have a countable shape.
            guard checkedProduct(shape) != nil else { throw reader.error(.badValue, "shape \(shape) is absurdly large") }
            let typeID = try reader.read(UInt32.self)
            let offset = try reader.read(UInt64.self)
            guard offset % UInt64(alignment) == 0 else {
                throw reader.error(.badValue, "data offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            guard offset <= UInt64(file.count) else {
                throw reader.error(.truncated, "data offset \(offset) lies outside the file (\(file.count) bytes)")
            }
            infos.append(TensorInfo(name: name, shape: shape, typeID: typeID, type: GGMLType(rawValue: typeID), offset: Int(offset)))
        }

        // Tensor data starts at the next multiple of the alignment after the tensor table.
        let dataStart = (reader.offset + alignment - 1) / alignment * alignment
        var index: [String: Int] = [:]
        var extents: [(name: String, range: Range<Int>)] = []
        for i in infos.indices {
            reader.item = infos[i].name
            guard index.updateValue(i, forKey: infos[i].name) == nil else { throw reader.error(.badValue, "duplicate tensor name") }
            infos[i].offset += dataStart
            // Size checks need the type's layout; an unknown type fails when its tensor is read.
            if let type = infos[i].type {
                let offset = infos[i].offset
                let size = try Self.byteCount(of: infos[i].shape, type: type, reader: reader)
                guard offset <= file.count, size <= file.count - offset else {
                    throw reader.error(.truncated, "data (\(size) bytes at offset \(offset)) runs past the end of the file (\(file.count) bytes)")
                }
                if size > 0 { extents.append((infos[i].name, offset..<(offset + size))) }
            }
        }
        // Two tensors sharing bytes is no file a writer makes: a crafted one, refused.
        extents.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        for (previous, next) in zip(extents, extents.dropFirst()) where next.range.lowerBound < previous.range.upperBound {
            reader.item = next.name
            throw reader.error(.badValue, "data overlaps that of \(previous.name)")
        }
        self.infos = infos
        self.index = index
    }

    /// The bytes a tensor of `shape` and `type` occupies; rows must hold whole blocks.
    private static func byteCount(of shape: [Int], type: GGMLType, reader: ByteReader) throws -> Int {
        let rowLength = shape.last ?? 1
        guard rowLength % type.blockSize == 0 else {
            throw reader.error(.badValue, "row length \(rowLength) is not a multiple of \(type.name)'s block size \(type.blockSize)")
        }
        guard let size = checkedProduct(shape.dropLast() + [rowLength / type.blockSize, type.typeSize]) else {
            throw reader.error(.badValue, "shape \(shape) is absurdly large")
        }
        return size
    }

    /// One value of `type`; `values` counts the array elements read so far, against
    /// `maximumMetadataValues`, before any memory is reserved for them.
    private static func readValue(type: UInt32, from reader: inout ByteReader, depth: Int, values: inout Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try reader.read(UInt8.self))
        case 1: return .int8(try reader.read(Int8.self))
        case 2: return .uint16(try reader.read(UInt16.self))
        case 3: return .int16(try reader.read(Int16.self))
        case 4: return .uint32(try reader.read(UInt32.self))
        case 5: return .int32(try reader.read(Int32.self))
        case 6: return .float32(try reader.readFloat())
        case 7:
            let byte = try reader.read(UInt8.self)
            guard byte <= 1 else { throw reader.error(.badValue, "bool holds \(byte)") }
            return .bool(byte == 1)
        case 8: return .string(try reader.readString())
        case 9:
            guard depth < maximumNesting else { throw reader.error(.badValue, "arrays nested deeper than \(maximumNesting)") }
            let elementType = try reader.read(UInt32.self)
            let count = try reader.readCount(minimumSize: minimumSize(ofType: elementType))
            values += count
            guard values <= maximumMetadataValues else {
                throw reader.error(.badValue, "an array of \(count) brings the metadata past the \(maximumMetadataValues) values Loupe reads")
            }
            var elements: [GGUFValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count { elements.append(try readValue(type: elementType, from: &reader, depth: depth + 1, values: &values)) }
            return .array(elements)
        case 10: return .uint64(try reader.read(UInt64.self))
        case 11: return .int64(try reader.read(Int64.self))
        case 12: return .float64(try reader.readDouble())
        default: throw reader.error(.badValue, "unknown metadata value type \(type)")
        }
    }

    /// The fewest bytes one value of a metadata type takes (a string: its length; an array:
    /// its element type and count).
    private static func minimumSize(ofType type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return 1  // the first element reports the unknown type
        }
    }

    // MARK: WeightSource

    public var description: String { path }

    /// In file order.
    public var tensorNames: [String] { infos.map(\.name) }

    /// Row-major: GGUF's ne[] reversed, so a [n_out, n_in] matrix reports [n_out, n_in].
    public func shape(of name: String) -> [Int]? { index[name].map { infos[$0].shape } }

    /// "F32", "Q4_1", ...; "TYPE_<id>" for an id Loupe does not know; nil if absent.
    public func typeName(of name: String) -> String? {
        index[name].map { infos[$0].type?.name ?? "TYPE_\(infos[$0].typeID)" }
    }

    /// Dequantized to float32 in row-major shape. F32 data is not copied: the tensor borrows
    /// the mapping (privately: writes to it never reach the file).
    public func tensor(_ name: String) throws -> Tensor {
        guard let i = index[name] else { throw missingTensor(name) }
        let info = infos[i]
        guard let type = info.type, let converter = type.converter else {
            let what = info.type.map { "tensor type \($0.name)" } ?? "unknown tensor type id \(info.typeID)"
            throw FormatError(.unknownDType, file: path, item: name, "Loupe cannot convert \(what) to float32")
        }
        return try file.tensor(name, shape: info.shape, at: info.offset, converter: converter)
    }

    /// A copy of a matrix's blocks, for the fused quantized product; its pages of the mapping
    /// are handed back as after a conversion.
    public func blocks(_ name: String) -> QuantizedMatrix? {
        guard let i = index[name], infos[i].shape.count == 2, let format = infos[i].type?.blockFormat else { return nil }
        let info = infos[i]
        let matrix = QuantizedMatrix(format: format, rows: info.shape[0], columns: info.shape[1], copying: file.pointer(at: info.offset))
        file.release(at: info.offset, count: matrix.byteCount)
        return matrix
    }
}
