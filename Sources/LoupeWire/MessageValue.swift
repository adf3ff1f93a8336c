/// One MessagePack value as Loupe's protocol uses it. Maps have string keys only: every
/// message on the wire is a map of named fields.
public enum MessageValue: Sendable, Equatable, Hashable {
    case null
    case bool(Bool)
    /// Any integer that fits in Int64; larger positive integers decode as `.uint`.
    case int(Int64)
    case uint(UInt64)
    /// float32 and float64 on the wire both decode here.
    case double(Double)
    case string(String)
    case binary([UInt8])
    case array([MessageValue])
    case map([String: MessageValue])
    /// A MessagePack extension: an application type code and its bytes.
    case ext(Int8, [UInt8])
}

// Reading values without a switch at every call site.
extension MessageValue {
    public subscript(key: String) -> MessageValue? {
        if case .map(let fields) = self { return fields[key] }
        return nil
    }

    public var isNull: Bool { self == .null }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The value as an Int when it is an integer that fits.
    public var intValue: Int? {
        switch self {
        case .int(let value): return Int(exactly: value)
        case .uint(let value): return Int(exactly: value)
        default: return nil
        }
    }

    /// Integers are numbers too: a client's `1` where a float is expected is fine.
    public var doubleValue: Double? {
        switch self {
        case .double(let value): return value
        case .int(let value): return Double(value)
        case .uint(let value): return Double(value)
        default: return nil
        }
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var binaryValue: [UInt8]? {
        if case .binary(let value) = self { return value }
        return nil
    }

    public var arrayValue: [MessageValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var mapValue: [String: MessageValue]? {
        if case .map(let value) = self { return value }
        return nil
    }

    /// The MessagePack type name, for error messages ("expected a string, got an array").
    public var typeName: String {
        switch self {
        case .null: return "nil"
        case .bool: return "a boolean"
        case .int, .uint: return "an integer"
        case .double: return "a float"
        case .string: return "a string"
        case .binary: return "binary data"
        case .array: return "an array"
        case .map: return "a map"
        case .ext: return "an extension value"
        }
    }
}

// Literals keep message-building code short: `["op": "hello", "id": 1]`.
extension MessageValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: MessageValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, MessageValue)...) {
        self = .map(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

extension MessageValue {
    public init(_ value: Int) { self = .int(Int64(value)) }
    public init(_ value: Double) { self = .double(value) }
    public init(_ value: Float) { self = .double(Double(value)) }
    public init(_ value: String) { self = .string(value) }
    public init(_ value: Bool) { self = .bool(value) }
    public init(_ values: [Int]) { self = .array(values.map { .int(Int64($0)) }) }
    public init(_ values: [String]) { self = .array(values.map { .string($0) }) }
}
