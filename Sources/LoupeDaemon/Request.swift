import Foundation
import LoupeWire

/// Where a reply goes: the ROUTER identity of the connection, whether it framed its
/// request with an empty delimiter (REQ sockets do), and the request's own id to echo.
struct Requester {
    let identity: [UInt8]
    let delimited: Bool
    let id: MessageValue
    /// The client asked for tensor data in attachment frames.
    let wantsFrames: Bool
    /// The daemon's sequence number for the request, for the log.
    let sequence: Int
}

/// How a job request wants its replies (PROTOCOL.md, "Jobs").
enum ReplyMode: String {
    case wait, stream, detach
}

/// A decoded request: its op, its fields, and typed access to them that fails with a
/// `bad_request` naming the field.
struct Request {
    let requester: Requester
    let op: String
    let fields: [String: MessageValue]
    let attachments: [[UInt8]]

    init(requester: Requester, op: String, fields: [String: MessageValue], attachments: [[UInt8]]) {
        self.requester = requester
        self.op = op
        self.fields = fields
        self.attachments = attachments
    }

    /// The request a decoded message holds, its envelope (`id`, `op`, `frames`) checked against
    /// the types PROTOCOL.md gives them. `requester` takes the id, when it is one, before
    /// anything else is checked, so that an error about the rest still echoes it.
    init(_ message: WireMessage, requester: inout Requester) throws(ProtocolError) {
        let fields = message.body.mapValue ?? [:]
        let id = fields["id"] ?? .null
        switch id {
        case .null, .int, .uint, .string: break
        default: throw ProtocolError(.badRequest, "'id' must be an integer or a string, got \(id.typeName)", field: "id")
        }
        requester = Requester(identity: requester.identity, delimited: requester.delimited, id: id,
                              wantsFrames: false, sequence: requester.sequence)
        guard let op = fields["op"]?.stringValue else {
            throw ProtocolError(.badRequest, "a request needs 'op' (a string)", field: "op")
        }
        let frames = fields["frames"] ?? .null
        guard frames == .null || frames.boolValue != nil else {
            throw ProtocolError(.badRequest, "'frames' must be a boolean, got \(frames.typeName)", field: "frames")
        }
        requester = Requester(identity: requester.identity, delimited: requester.delimited, id: id,
                              wantsFrames: frames.boolValue ?? false, sequence: requester.sequence)
        self.init(requester: requester, op: op, fields: fields, attachments: message.attachments)
    }

    func has(_ key: String) -> Bool { fields[key] != nil && fields[key] != .null }

    func string(_ key: String) throws(ProtocolError) -> String {
        guard let value = fields[key] else { throw missing(key, "a string") }
        guard let text = value.stringValue else { throw wrongType(key, "a string", value) }
        return text
    }

    func int(_ key: String) throws(ProtocolError) -> Int {
        guard let value = fields[key] else { throw missing(key, "an integer") }
        guard let number = value.intValue else { throw wrongType(key, "an integer", value) }
        return number
    }

    func optionalInt(_ key: String) throws(ProtocolError) -> Int? { has(key) ? try int(key) : nil }

    func optionalDouble(_ key: String) throws(ProtocolError) -> Double? {
        guard let value = fields[key], value != .null else { return nil }
        guard let number = value.doubleValue else { throw wrongType(key, "a number", value) }
        return number
    }

    func bool(_ key: String, default fallback: Bool) throws(ProtocolError) -> Bool {
        guard let value = fields[key], value != .null else { return fallback }
        guard let flag = value.boolValue else { throw wrongType(key, "a boolean", value) }
        return flag
    }

    func array(_ key: String) throws(ProtocolError) -> [MessageValue] {
        guard let value = fields[key] else { throw missing(key, "an array") }
        guard let items = value.arrayValue else { throw wrongType(key, "an array", value) }
        return items
    }

    func integerArray(_ key: String) throws(ProtocolError) -> [Int] {
        guard let value = fields[key] else { throw missing(key, "an array of integers") }
        return try integers(value, field: key)
    }

    /// An array of integers, each element's error naming its index.
    func integers(_ value: MessageValue, field: String) throws(ProtocolError) -> [Int] {
        guard let items = value.arrayValue else { throw wrongType(field, "an array of integers", value) }
        var numbers = [Int]()
        numbers.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            guard let number = item.intValue else { throw wrongType("\(field).\(index)", "an integer", item) }
            numbers.append(number)
        }
        return numbers
    }

    /// `name` of a model to load: 1-64 characters of letters, digits, `.`, `_` and `-`.
    func modelName() throws(ProtocolError) -> String {
        let name = try string("name")
        let allowed = name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }
        guard (1...64).contains(name.count), allowed else {
            throw ProtocolError(.badRequest, "a model name is 1-64 characters of letters, digits, '.', '_' and '-'; got '\(name)'", field: "name")
        }
        return name
    }

    /// `protocol`, when given, must be this server's version.
    func checkProtocolVersion() throws(ProtocolError) {
        guard let value = fields["protocol"], value != .null else { return }
        guard let version = value.intValue else {
            throw ProtocolError(.badRequest, "'protocol' must be an integer", field: "protocol")
        }
        guard version == WireProtocol.version else {
            throw ProtocolError(.versionMismatch,
                                "client speaks protocol \(version); this server speaks protocol \(WireProtocol.version)",
                                field: "protocol")
        }
    }

    func mode() throws(ProtocolError) -> ReplyMode {
        guard has("mode") else { return .wait }
        let name = try string("mode")
        guard let mode = ReplyMode(rawValue: name) else {
            throw ProtocolError(.badRequest, "mode must be wait, stream or detach, not '\(name)'", field: "mode")
        }
        return mode
    }

    private func missing(_ key: String, _ kind: String) -> ProtocolError {
        ProtocolError(.badRequest, "\(op) needs '\(key)' (\(kind))", field: key)
    }

    private func wrongType(_ key: String, _ kind: String, _ value: MessageValue) -> ProtocolError {
        ProtocolError(.badRequest, "'\(key)' must be \(kind), got \(value.typeName)", field: key)
    }
}
