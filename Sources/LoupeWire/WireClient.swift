import CZMQ

/// Why a client call did not return a result.
public enum ClientError: Error, Sendable, CustomStringConvertible {
    /// Nothing answered within the timeout: most likely no daemon is running there.
    case noReply(endpoint: String, seconds: Double)
    /// The daemon answered with an error reply.
    case daemon(ProtocolError)
    case transport(ZMQError)
    case badReply(String)
    /// The daemon answering now is not the one that took the request: it restarted, and
    /// the request's job went with the old one.
    case daemonRestarted(endpoint: String, started: String)

    public var description: String {
        switch self {
        case .noReply(let endpoint, let seconds):
            return String(format: "no Loupe daemon answered at %@ within %.0f s; start one with `loupe serve`", endpoint, seconds)
        case .daemon(let error): return error.message
        case .transport(let error): return error.description
        case .badReply(let message): return "unreadable reply from the daemon: \(message)"
        case .daemonRestarted(let endpoint, let started):
            return "the daemon at \(endpoint) restarted (the new one started \(started)): the request in flight was lost with the old one; send it again"
        }
    }
}

/// A connection to a daemon over a DEALER socket, for one thread at a time.
///
/// `call` sends a request and returns its final reply. Requests go as `mode: stream` unless
/// they say otherwise, so the daemon acknowledges a long one at once: the first reply must
/// come within `timeout`, which tells a missing daemon from a slow job; later replies may
/// take as long as the job does.
///
/// While a job runs, a silence of `livenessInterval` seconds sends a `hello`: a daemon that
/// answers with another `instance` than the one that took the job (its `accepted` reply
/// says which) has restarted, and `call`
/// throws `daemonRestarted` instead of waiting forever. The socket keeps one routing id for
/// its life, so after a dropped connection libzmq reconnects it under the same identity and
/// the daemon's replies find it again.
public final class WireClient {
    public let endpoint: String
    public var timeout: Double
    public var limits: DecodeLimits
    public var livenessInterval: Double = 10
    /// The daemon's `instance`, once a `hello` reply has said it.
    public private(set) var daemonInstance: String?
    private let socket: ZMQSocket
    private var nextID: Int64 = 1

    /// `curve`: the keys for a daemon that requires CURVE (`loupe serve --curve-secret-key`).
    public init(endpoint: String, timeout: Double = 5, limits: DecodeLimits = .standard,
                curve: CurveClientKeys? = nil) throws(ClientError) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.limits = limits
        do {
            socket = try ZMQSocket(.dealer)
            if let curve { try socket.makeCurveClient(curve) }
            // Random, never starting with a zero byte (libzmq reserves those).
            try socket.setOption(ZMQ_ROUTING_ID, bytes: [UInt8.random(in: 1...255)] + (0..<15).map { _ in UInt8.random(in: 0...255) })
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
        var instanceAtStart = daemonInstance
        var probing = false
        while true {
            guard let reply = try receive(timeout: first ? timeout : livenessInterval) else {
                if first { throw .noReply(endpoint: endpoint, seconds: timeout) }
                // Silence: ask who is there (once; an unanswered probe waits for the daemon to return).
                if !probing { try sendProbe() }
                probing = true
                continue
            }
            if reply.body["id"]?.stringValue == Self.probeID {
                probing = false
                daemonInstance = reply.body["instance"]?.stringValue ?? daemonInstance
                if let before = instanceAtStart, let now = daemonInstance, before != now {
                    throw .daemonRestarted(endpoint: endpoint, started: reply.body["started"]?.stringValue ?? "?")
                }
                instanceAtStart = instanceAtStart ?? daemonInstance
                continue
            }
            // A reply to an earlier request that timed out on this socket: not ours.
            guard reply.body["id"]?.intValue == Int(id) else { continue }
            // `accepted` says which daemon took the job.
            if reply.body["status"] == "accepted", let instance = reply.body["instance"]?.stringValue {
                daemonInstance = instance
                instanceAtStart = instance
            }
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

    /// The id of the `hello` requests `call` sends to check on the daemon.
    static let probeID = "liveness"

    private func sendProbe() throws(ClientError) {
        try send(WireMessage(["id": .string(Self.probeID), "op": "hello", "protocol": MessageValue(WireProtocol.version)]))
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
