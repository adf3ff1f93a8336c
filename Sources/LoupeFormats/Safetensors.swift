import Foundation
import LoupeTensor

/// A safetensors file, memory-mapped: an 8-byte little-endian header length, a JSON header
/// (tensor name → dtype, shape, data offsets; optional `__metadata__`), then the data. The
/// header is validated fully on opening; F32 tensors borrow the mapping without copying.
public final class SafetensorsFile: WeightSource, @unchecked Sendable {
    public let path: String
    public let metadata: [String: String]
    /// In data order.
    public let tensorNames: [String]

    private struct Entry {
        let dtype: DType
        let shape: [Int]
        let offset: Int   // absolute, in the file
    }

    /// The dtypes of the safetensors format, with their element sizes.
    private enum DType: String {
        case bool = "BOOL", u8 = "U8", i8 = "I8", f8e5m2 = "F8_E5M2", f8e4m3 = "F8_E4M3"
        case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
        case i32 = "I32", u32 = "U32", f32 = "F32", i64 = "I64", u64 = "U64", f64 = "F64"

        var size: Int {
            switch self {
            case .bool, .u8, .i8, .f8e5m2, .f8e4m3: return 1
            case .i16, .u16, .f16, .bf16: return 2
            case .i32, .u32, .f32: return 4
            case .i64, .u64, .f64: return 8
            }
        }

        var converter: BlockConverter? {
            switch self {
            case .f32: return GGMLType.f32.converter
            case .f16: return GGMLType.f16.converter
            case .bf16: return GGMLType.bf16.converter
            default: return nil
            }
        }
    }

    private let file: MappedFile
    private let entries: [String: Entry]

    /// `control`: the load reading it, checked before each tensor is converted.
    public init(path: String, control: LoadControl? = nil) throws {
        self.path = path
        file = try MappedFile(path: path, control: control)
        var reader = ByteReader(file.bytes, file: path)
        reader.item = "header length"
        let headerLength = try reader.read(UInt64.self)
        reader.item = "header"
        try reader.need(headerLength)
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.count - dataStart
        let header = try JSONValue.parse(UnsafeRawBufferPointer(rebasing: file.bytes[8..<dataStart]), file: path)
        guard let members = header.objectValue else { throw reader.error(.badValue, "the header is not a JSON object") }

        var metadata: [String: String] = [:]
        var entries: [String: Entry] = [:]
        var extents: [(name: String, range: Range<Int>)] = []
        for (name, value) in members {
            reader.item = name
            if name == "__metadata__" {
                guard let object = value.objectValue else { throw reader.error(.badValue, "__metadata__ is not an object") }
                for (key, value) in object {
                    reader.item = key
                    guard let text = value.stringValue else { throw reader.error(.badValue, "metadata values must be strings") }
                    metadata[key] = text
                }
                continue
            }
            guard let dtypeName = value["dtype"]?.stringValue else { throw reader.error(.badValue, "no dtype") }
            guard let dtype = DType(rawValue: dtypeName) else { throw reader.error(.unknownDType, "unknown dtype \(dtypeName)") }
            guard let dimensions = value["shape"]?.arrayValue else { throw reader.error(.badValue, "no shape") }
            let shape = dimensions.compactMap(\.intValue)
            guard shape.count == dimensions.count, shape.allSatisfy({ $0 >= 0 }) else {
                throw reader.error(.badValue, "shape \(dimensions) is not a list of sizes")
            }
            guard let offsets = value["data_offsets"]?.arrayValue, offsets.count == 2,
                  let begin = offsets[0].intValue, let end = offsets[1].intValue, 0 <= begin, begin <= end
            else { throw reader.error(.badValue, "data_offsets must be [begin, end] with begin <= end") }
            guard let size = checkedProduct(shape + [dtype.size]) else {
                throw reader.error(.badValue, "shape \(shape) is absurdly large")
            }
            guard end - begin == size else {
                throw reader.error(.badValue, "data_offsets [\(begin), \(end)] hold \(end - begin) bytes but \(dtypeName) \(shape) needs \(size)")
            }
            guard end <= dataSize else {
                throw reader.error(.truncated, "data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, offset: dataStart + begin)
            extents.append((name, begin..<end))
        }

        extents.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        for (previous, next) in zip(extents, extents.dropFirst()) where next.range.lowerBound < previous.range.upperBound {
            reader.item = next.name
            throw reader.error(.badValue, "data overlaps that of \(previous.name)")
        }
        self.metadata = metadata
        self.entries = entries
        self.tensorNames = extents.map(\.name)
    }

    public var description: String { path }

    public func shape(of name: String) -> [Int]? { entries[name]?.shape }

    /// The stored dtype ("F32", "BF16", ...), nil if absent.
    public func dtypeName(of name: String) -> String? { entries[name]?.dtype.rawValue }

    /// F32 borrows the mapping (privately: writes never reach the file); F16 and BF16 are
    /// converted; other dtypes are `.unknownDType`.
    public func tensor(_ name: String) throws -> Tensor {
        guard let entry = entries[name] else { throw missingTensor(name) }
        guard let converter = entry.dtype.converter else {
            throw FormatError(.unknownDType, file: path, item: name, "Loupe reads F32, F16 and BF16 tensors, not \(entry.dtype.rawValue)")
        }
        return try file.tensor(name, shape: entry.shape, at: entry.offset, converter: converter)
    }
}

/// An HF directory's weights: model.safetensors, or shards listed in model.safetensors.index.json.
public final class SafetensorsDirectory: WeightSource, @unchecked Sendable {
    public let directory: String
    /// Shard by shard, each in data order.
    public let tensorNames: [String]
    private let shards: [SafetensorsFile]
    private let shardOf: [String: Int]

    public init(directory: String, control: LoadControl? = nil) throws {
        self.directory = directory
        let fm = FileManager.default
        let single = "\(directory)/model.safetensors"
        let indexPath = "\(directory)/model.safetensors.index.json"
        var shardNames: [String]
        var weightMap: [String: JSONValue] = [:]
        if fm.fileExists(atPath: indexPath) {
            let index = try JSONValue.parse(contentsOf: indexPath)
            guard let map = index["weight_map"]?.objectValue else {
                throw FormatError(.badValue, file: indexPath, item: "weight_map", "no weight_map object")
            }
            weightMap = map
            var names = Set<String>()
            for (tensor, shard) in map {
                guard let name = shard.stringValue else {
                    throw FormatError(.badValue, file: indexPath, item: tensor, "the shard name is not a string")
                }
                // A shard lies in the directory itself: a path could reach any file on the machine.
                guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
                    throw FormatError(.badValue, file: indexPath, item: tensor, "shard '\(name)' is not a file name in the model's directory")
                }
                names.insert(name)
            }
            shardNames = names.sorted()
        } else if fm.fileExists(atPath: single) {
            shardNames = ["model.safetensors"]
        } else {
            throw FormatError(.missingTensor, file: directory, item: "model.safetensors",
                              "no model.safetensors or model.safetensors.index.json in the directory")
        }

        shards = try shardNames.map { try SafetensorsFile(path: "\(directory)/\($0)", control: control) }
        var shardOf: [String: Int] = [:]
        var names: [String] = []
        for (i, shard) in shards.enumerated() {
            for name in shard.tensorNames {
                guard shardOf.updateValue(i, forKey: name) == nil else {
                    throw FormatError(.badValue, file: shard.path, item: name, "tensor also stored in \(shards[shardOf[name]!].path)")
                }
                names.append(name)
            }
        }
        // Every tensor the index promises must be in the shard it names.
        for (tensor, shard) in weightMap where shardOf[tensor].map({ shardNames[$0] }) != shard.stringValue {
            throw FormatError(.missingTensor, file: "\(directory)/\(shard.stringValue ?? "")", item: tensor,
                              "listed in model.safetensors.index.json but not in this shard")
        }
        self.shardOf = shardOf
        self.tensorNames = names
    }

    public var description: String { directory }

    public func shape(of name: String) -> [Int]? { shardOf[name].flatMap { shards[$0].shape(of: name) } }

    public func tensor(_ name: String) throws -> Tensor {
        guard let i = shardOf[name] else { throw missingTensor(name) }
        return try shards[i].tensor(name)
    }
}
