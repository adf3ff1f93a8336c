import CZMQ

/// Why a client call did not return a result.
public enum ClientError: Error, Sendable, CustomStringConvertible {
    /// Nothing answered within the timeout: most likely no daemon is running there.
    case noReply(endpoint: String, seconds: Double)
    /// The daemon answered with an error reply.
    case daemon(ProtocolError)
    case transport(ZMQError)
    case badReply(String)

    public var description: String {
        switch self {
        case .noReply(let endpoint, let seconds):
            return String(format: "no Loupe daemon answered at %@ within %.0f s; start one with `loupe serve`", endpoint, seconds)
        case .daemon(let error): return error.message
        case .transport(let error): return error.description
        case .badReply(let message): return "unreadable reply from the daemon: \(message)"
        }
    }
}

/// A connection to a daemon over a DEALER socket, for one thread at a time.
///
/// `call` sends a request and returns its final reply. Requests go as `mode: stream` unless
/// they say otherwise, so the daemon acknowledges a long one at once: the first reply must
/// come within `timeout`, which tells a missing daemon from a slow job; later replies may
/// take as long as the job does.
public final class WireClient {
    public let endpoint: String
    public var timeout: Double
    public var limits: DecodeLimits
    private let socket: ZMQSocket
    private var nextID: Int64 = 1

    public init(endpoint: String, timeout: Double = 5, limits: DecodeLimits = .standard) throws(ClientError) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.limits = limits
        do {
            socket = try ZMQSocket(.dealer)
            try socket.connect(endpoint)
        } catch {
            throw .transport(error)
        }
    }

    /// Sends `op` with `fields` and waits for the final reply; `ok` replies are returned,
    /// `error` replies thrown as `ClientError.daemon`. `interim` sees every other reply.
    /// A `mode: detach` request's final reply is its `accepted`.
    @discardableResult
    public func call(_ op: String, _ fields: [String: MessageValue] = [:], attachments: [[UInt8]] = [],
                     interim: ((MessageValue) -> Void)? = nil) throws(ClientError) -> WireMessage {
        let id = nextID
        nextID += 1
        var body = fields
        if body["mode"] == nil { body["mode"] = "stream" }
        body["id"] = .int(id)
        body["op"] = .string(op)
        try send(WireMessage(.map(body), attachments: attachments))
        var first = true
        while true {
            guard let reply = try receive(timeout: first ? timeout : nil) else {
                throw .noReply(endpoint: endpoint, seconds: timeout)
            }
            // A reply to an earlier request that timed out on this socket: not ours.
            guard reply.body["id"]?.intValue == Int(id) else { continue }
            first = false
            guard let status = reply.body["status"]?.stringValue.flatMap(ReplyStatus.init(rawValue:)) else {
                throw .badReply("reply without a known status")
            }
            switch status {
            case .ok: return reply
            case .accepted where body["mode"] == "detach": return reply
            case .error:
                throw .daemon(ProtocolError(reply.body["error"]) ?? ProtocolError(.internalError, "error reply without a message"))
            default: interim?(reply.body)
            }
        }
    }

    public func send(_ message: WireMessage) throws(ClientError) {
        do { try socket.send(message.frames) } catch { throw .transport(error) }
    }

    /// The next message, or nil after `timeout` seconds (nil: wait as long as it takes).
    public func receive(timeout: Double?) throws(ClientError) -> WireMessage? {
        do {
            try socket.setOption(ZMQ_RCVTIMEO, Int32(timeout.map { max(Int($0 * 1000), 0) } ?? -1))
            guard let frames = try socket.receive() else { return nil }
            return try WireMessage(frames: frames, limits: limits)
        } catch let error as ZMQError {
            throw .transport(error)
        } catch let error as WireError {
            throw .badReply(error.message)
        } catch {
            throw .badReply("\(error)")
        }
    }
}
