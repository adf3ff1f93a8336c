/// The wire contract's fixed vocabulary; Protocol/PROTOCOL.md describes each value.
public enum WireProtocol {
    /// Bumped on any change an old peer would misread.
    public static let version = 4
    public static let defaultEndpoint = "tcp://127.0.0.1:5557"
}

/// Where a request stands; every reply carries one.
public enum ReplyStatus: String, Sendable, CaseIterable {
    case accepted, queued, running, progress, tokens, ok, error

    /// `ok` and `error` end a request; the others are interim.
    public var isFinal: Bool { self == .ok || self == .error }
}

/// The stable error codes. Clients switch on these, so they never change meaning.
public enum ErrorCode: String, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case unknownOp = "unknown_op"
    case notImplemented = "not_implemented"
    case versionMismatch = "version_mismatch"
    case unknownModel = "unknown_model"
    case unknownSite = "unknown_site"
    case shapeMismatch = "shape_mismatch"
    case indexOutOfRange = "index_out_of_range"
    case tooLarge = "too_large"
    case busy
    case cancelled
    case notFound = "not_found"
    case loadFailed = "load_failed"
    /// A trace's `intervene` node names no registered intervention.
    case unknownIntervention = "unknown_intervention"
    /// A trace writes a site's value with something computed only after that site.
    case outOfOrder = "out_of_order"
    case internalError = "internal"
}

/// An error reply's payload: a code, a sentence a person can act on, and the request
/// field (a dotted path such as `invokes.2.tokens`) it is about, when there is one.
public struct ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: ErrorCode
    public let message: String
    public let field: String?
    /// For a trace: the id of the node at fault.
    public let node: Int?

    public init(_ code: ErrorCode, _ message: String, field: String? = nil, node: Int? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.node = node
    }

    public var description: String { message }

    public var messageValue: MessageValue {
        var fields: [String: MessageValue] = ["code": .string(code.rawValue), "message": .string(message),
                                              "field": field.map { .string($0) } ?? .null]
        if let node { fields["node"] = MessageValue(node) }
        return .map(fields)
    }

    /// Reads an error reply's `error` map; unknown codes (from a newer server) become `internal`.
    public init?(_ value: MessageValue?) {
        guard let value, let message = value["message"]?.stringValue else { return nil }
        self.code = value["code"]?.stringValue.flatMap(ErrorCode.init(rawValue:)) ?? .internalError
        self.message = message
        self.field = value["field"]?.stringValue
        self.node = value["node"]?.intValue
    }

    /// How a decoding failure is reported: limits are `too_large`, tensors whose data does not
    /// fit their shape `shape_mismatch`, anything else unreadable `bad_request`.
    public init(_ error: WireError, field: String? = nil) {
        switch error.kind {
        case .tooLarge: self.init(.tooLarge, error.message, field: field)
        case .shapeMismatch: self.init(.shapeMismatch, error.message, field: field)
        default: self.init(.badRequest, error.message, field: field)
        }
    }
}
