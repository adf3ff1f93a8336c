import Foundation

extension MessageValue {
    /// JSON text of the value, for people and for tools that read JSON: map keys sorted,
    /// binary data as `{"$binary": BASE64}`, extensions as `{"$ext": TYPE, "data": BASE64}`,
    /// non-finite floats as null (JSON has no spelling for them).
    public func jsonText(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, indent: pretty ? "" : nil)
        return out
    }

    private func write(into out: inout String, indent: String?) {
        let inner = indent.map { $0 + "  " }
        let newline = indent == nil ? "" : "\n"
        let separator = indent == nil ? ":" : ": "
        switch self {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .int(let number): out += String(number)
        case .uint(let number): out += String(number)
        case .double(let number): out += number.isFinite ? "\(number)" : "null"
        case .string(let text): Self.quote(text, into: &out)
        case .binary(let bytes): MessageValue.map(["$binary": .string(Data(bytes).base64EncodedString())]).write(into: &out, indent: indent)
        case .ext(let type, let bytes):
            MessageValue.map(["$ext": .int(Int64(type)), "data": .string(Data(bytes).base64EncodedString())]).write(into: &out, indent: indent)
        case .array(let items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "[" + newline
            for (index, item) in items.enumerated() {
                out += inner ?? ""
                item.write(into: &out, indent: inner)
                out += (index < items.count - 1 ? "," : "") + newline
            }
            out += (indent ?? "") + "]"
        case .map(let fields):
            guard !fields.isEmpty else { out += "{}"; return }
            out += "{" + newline
            for (index, key) in fields.keys.sorted().enumerated() {
                out += inner ?? ""
                Self.quote(key, into: &out)
                out += separator
                fields[key]!.write(into: &out, indent: inner)
                out += (index < fields.count - 1 ? "," : "") + newline
            }
            out += (indent ?? "") + "}"
        }
    }

    private static func quote(_ text: String, into out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
