/// One protocol message as ZeroMQ carries it: a MessagePack map in the first frame, and
/// extra frames holding tensor data that the map refers to as `{frame: N}`.
public struct WireMessage: Sendable, Equatable {
    public var body: MessageValue
    public var attachments: [[UInt8]]

    public init(_ body: MessageValue, attachments: [[UInt8]] = []) {
        self.body = body
        self.attachments = attachments
    }

    public var frames: [[UInt8]] { [MessageEncoder.encode(body)] + attachments }

    /// Decodes the first frame; the attachments count against the size limit too.
    public init(frames: [[UInt8]], limits: DecodeLimits = .standard) throws(WireError) {
        guard let first = frames.first else { throw WireError(.truncated, "empty message") }
        let total = frames.reduce(0) { $0 + $1.count }
        guard total <= limits.maxBytes else {
            throw WireError(.tooLarge, "message of \(total) bytes exceeds the limit of \(limits.maxBytes)")
        }
        let body = try MessageDecoder.decode(first, limits: limits)
        guard case .map = body else { throw WireError(.malformed, "a message must be a MessagePack map, got \(body.typeName)") }
        self.body = body
        self.attachments = Array(frames.dropFirst())
    }
}
