import LoupeTensor

/// A trace as plain data: the shape of a decoded MessagePack (or JSON) value, with tensors
/// already turned into `Tensor`s. The wire layer maps its own value type onto this one;
/// nothing in LoupeTrace knows about MessagePack.
public enum TraceValue: @unchecked Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TraceValue])
    case map([String: TraceValue])
    /// A float32 tensor (the wire's `{dtype, shape, data}`, decoded by the caller).
    case tensor(Tensor)
}

extension TraceValue {
    public subscript(key: String) -> TraceValue? {
        if case .map(let fields) = self { return fields[key] }
        return nil
    }

    public var isNull: Bool { if case .null = self { return true } else { return false } }

    public var intValue: Int? {
        switch self {
        case .int(let v): return v
        case .double(let d) where d.rounded() == d && abs(d) < 1e15: return Int(d)
        default: return nil
        }
    }

    /// Integers count as numbers.
    public var doubleValue: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .double(let d): return d
        default: return nil
        }
    }

    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var arrayValue: [TraceValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var mapValue: [String: TraceValue]? { if case .map(let m) = self { return m } else { return nil } }
    public var tensorValue: Tensor? { if case .tensor(let t) = self { return t } else { return nil } }

    /// `{ref: n}`: a reference to node n.
    public var reference: Int? {
        guard case .map(let fields) = self, fields.count == 1, let n = fields["ref"]?.intValue else { return nil }
        return n
    }

    /// What kind of value this is, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "nil"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a float"
        case .string: return "a string"
        case .array: return "an array"
        case .map: return reference != nil ? "a node reference" : "a map"
        case .tensor: return "a tensor"
        }
    }

    public static func ref(_ node: Int) -> TraceValue { .map(["ref": .int(node)]) }
}

extension TraceValue: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral {
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: TraceValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, TraceValue)...) {
        self = .map(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(nilLiteral: ()) { self = .null }
}
