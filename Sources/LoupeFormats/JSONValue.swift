import Foundation

/// A parsed JSON value (config.json, a safetensors header, tokenizer.json ...).
public enum JSONValue: Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    /// Parses UTF-8 JSON text. Python's `NaN`, `Infinity` and `-Infinity`, which `json.dump`
    /// writes into HF configs, are accepted. Syntax errors are `FormatError(.badValue)` naming `file`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws -> JSONValue {
        try parse(bytes, file: file, maximumValues: maximumValues)
    }

    /// More values than any real file holds (a tokenizer.json of 262,144 tokens and 500,000
    /// merges has about two million): a parsed value takes tens of bytes for each byte of text,
    /// so a huge file of `[0,0,0,...]` would otherwise become gigabytes of tree. More is a
    /// `.badValue` error, raised as the count is passed.
    public static let maximumValues = 1 << 24

    /// Deeper nesting than any real file needs (tokenizer.json nests six deep, a config four);
    /// hostile input could otherwise exhaust the stack, here or where the tree is compared or
    /// freed. Deeper is a `.badValue` error.
    public static let maximumDepth = 128

    /// `parse` with another bound on the values (tests use a small one).
    static func parse(_ bytes: UnsafeRawBufferPointer, file: String, maximumValues: Int) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes, file: file, maximumValues: maximumValues)
        return try parser.parseDocument()
    }

    public static func parse(_ text: String, file: String) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { try parse(UnsafeRawBufferPointer($0), file: file) }
    }

    /// Reads and parses a JSON file: `.io` if it cannot be read or is no regular file, `.badValue`
    /// if it is not JSON.
    public static func parse(contentsOf path: String) throws -> JSONValue {
        try readRegularFile(path).withUnsafeBytes { try parse($0, file: path) }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var doubleValue: Double? {
        if case .number(let n) = self { return n }
        return nil
    }

    /// The number as an Int when it is integral and fits (nil for 1.5 or a non-number).
    public var intValue: Int? {
        guard case .number(let n) = self, n.isFinite, n.rounded() == n else { return nil }
        return Int(exactly: n)
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var isNull: Bool { self == .null }
}

/// A recursive-descent JSON parser over raw bytes.
private struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    let file: String
    var position = 0
    var depth = 0
    /// Values parsed so far, counted against `maximumValues`.
    var values = 0
    let maximumValues: Int
    static let maximumDepth = JSONValue.maximumDepth

    init(bytes: UnsafeRawBufferPointer, file: String, maximumValues: Int) {
        self.bytes = bytes
        self.file = file
        self.maximumValues = maximumValues
    }

    func error(_ message: String) -> FormatError {
        // Line and column help someone fixing a hand-edited config.json.
        var line = 1, column = 1
        for byte in bytes[..<min(position, bytes.count)] {
            if byte == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
        }
        return FormatError(.badValue, file: file, "not valid JSON: \(message) at line \(line), column \(column)")
    }

    var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { position += 1 }
    }

    mutating func parseDocument() throws -> JSONValue {
        // A UTF-8 byte-order mark is tolerated, as Python's json.load does with utf-8-sig.
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { position = 3 }
        let value: JSONValue
        do {
            value = try parseValue()
        } catch let duplicate as DuplicateKey {
            throw duplicate.formatError
        }
        skipWhitespace()
        guard position == bytes.count else { throw error("unexpected text after the value") }
        return value
    }

    mutating func parseValue() throws -> JSONValue {
        values += 1
        guard values <= maximumValues else { throw error("more than \(maximumValues) values") }
        skipWhitespace()
        guard let byte = current else { throw error("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "N"): try expect("NaN"); return .number(.nan)
        case UInt8(ascii: "I"): try expect("Infinity"); return .number(.infinity)
        default: return .number(try parseNumber())
        }
    }

    mutating func expect(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard position + count <= bytes.count,
              memcmp(bytes.baseAddress! + position, word.utf8Start, count) == 0
        else { throw error("unexpected character") }
        position += count
    }

    mutating func enter() throws {
        depth += 1
        guard depth <= JSONParser.maximumDepth else { throw error("nesting deeper than \(JSONParser.maximumDepth)") }
    }

    mutating func parseObject() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if current == UInt8(ascii: "}") { position += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let key = try parseString()
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw error("expected ':'") }
            position += 1
            let value: JSONValue
            do {
                value = try parseValue()
            } catch var duplicate as DuplicateKey {
                duplicate.path.insert(.key(key), at: 0)
                throw duplicate
            }
            // Readers that take the last (Python) and the first of a repeated key would see
            // different files: a key repeated is refused, naming where it is.
            guard members.updateValue(value, forKey: key) == nil else {
                throw DuplicateKey(key: key, path: [], error: error("the key \"\(key)\" appears twice in one object"))
            }
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "}"): position += 1; return .object(members)
            default: throw error("expected ',' or '}'")
            }
        }
    }

    mutating func parseArray() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        position += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") { position += 1; return .array(elements) }
        while true {
            do {
                elements.append(try parseValue())
            } catch var duplicate as DuplicateKey {
                duplicate.path.insert(.index(elements.count), at: 0)
                throw duplicate
            }
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "]"): position += 1; return .array(elements)
            default: throw error("expected ',' or ']'")
            }
        }
    }

    mutating func parseString() throws -> String {
        position += 1  // the opening quote
        let start = position
        // Fast path: no escapes, so the bytes are the string.
        while let byte = current, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\") {
            guard byte >= 0x20 else { throw error("control character in a string") }
            position += 1
        }
        guard let stop = current else { throw error("unterminated string") }
        let plain = UnsafeRawBufferPointer(rebasing: bytes[start..<position])
        if stop == UInt8(ascii: "\"") {
            position += 1
            return String(decoding: plain, as: UTF8.self)
        }
        var utf8 = Array(plain)
        while true {
            guard let byte = current else { throw error("unterminated string") }
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: utf8, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard let escaped = current else { throw error("unterminated string") }
                position += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escaped)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"): utf8.append(contentsOf: String(try parseUnicodeEscape()).utf8)
                default: throw error("bad escape")
                }
            case 0..<0x20:
                throw error("control character in a string")
            default:
                utf8.append(byte)
            }
        }
    }

    /// The scalar of a `\uXXXX` escape (the `\u` already read), joining surrogate pairs;
    /// a lone surrogate becomes U+FFFD, as Python's decoder would not reject it either.
    mutating func parseUnicodeEscape() throws -> Unicode.Scalar {
        let high = try parseHex4()
        if (0xD800..<0xDC00).contains(high), position + 1 < bytes.count,
           bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") {
            let saved = position
            position += 2
            let low = try parseHex4()
            if (0xDC00..<0xE000).contains(low) {
                return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))!
            }
            position = saved
        }
        return Unicode.Scalar(high) ?? "\u{FFFD}"
    }

    mutating func parseHex4() throws -> UInt32 {
        guard position + 4 <= bytes.count else { throw error("short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = hexDigit(bytes[position]) else { throw error("bad \\u escape") }
            value = value << 4 | digit
            position += 1
        }
        return value
    }

    func hexDigit(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    /// Checks the JSON number grammar, then converts with the C library (correctly rounded).
    mutating func parseNumber() throws -> Double {
        let start = position
        if current == UInt8(ascii: "-") {
            position += 1
            if current == UInt8(ascii: "I") { try expect("Infinity"); return -.infinity }
        }
        func digits(_ parser: inout JSONParser) -> Int {
            let from = parser.position
            while let byte = parser.current, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") { parser.position += 1 }
            return parser.position - from
        }
        let integerDigits = digits(&self)
        guard integerDigits > 0 else { throw error("unexpected character") }
        // Fast path for the common short integer (ids, sizes, offsets): exact without strtod.
        if integerDigits <= 15, current != UInt8(ascii: "."), current != UInt8(ascii: "e"), current != UInt8(ascii: "E") {
            var value = 0
            for byte in bytes[(position - integerDigits)..<position] { value = value * 10 + Int(byte - UInt8(ascii: "0")) }
            return bytes[start] == UInt8(ascii: "-") ? -Double(value) : Double(value)
        }
        if current == UInt8(ascii: ".") {
            position += 1
            guard digits(&self) > 0 else { throw error("expected digits after '.'") }
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard digits(&self) > 0 else { throw error("expected digits in the exponent") }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
        guard let value = Double(text) else { throw error("bad number") }
        return value
    }
}

/// A key repeated in an object, on its way out of the parser: each enclosing object and array
/// adds its key or index, so the error names the entry (`model.vocab["a"]`).
private struct DuplicateKey: Error {
    enum Component {
        case key(String), index(Int)
    }

    let key: String
    /// The keys and indices of the containers around the object, outermost first.
    var path: [Component]
    let error: FormatError

    var formatError: FormatError {
        var item = ""
        for component in path {
            switch component {
            case .key(let key): item += item.isEmpty ? key : "." + key
            case .index(let index): item += "[\(index)]"
            }
        }
        item += item.isEmpty ? "\"\(key)\"" : "[\"\(key)\"]"
        return FormatError(error.kind, file: error.file, item: item, error.message)
    }
}
