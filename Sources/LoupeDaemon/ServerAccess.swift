import CZMQ
import Foundation
import Logging
import LoupeWire
import Synchronization

/// CURVE for the daemon: its key pair and the client public keys let in.
public struct CurveServerSettings: Sendable {
    public var keyPair: CurveKeyPair
    public var allowedClients: Set<CurveKey>

    public init(keyPair: CurveKeyPair, allowedClients: Set<CurveKey>) {
        self.keyPair = keyPair
        self.allowedClients = allowedClients
    }

    /// `--curve-secret-key FILE --allow-keys FILE`: both must be readable by their owner only.
    public static func load(secretKeyFile: String, allowListFile: String) throws(CurveError) -> CurveServerSettings {
        let keyPair = try CurveKeyFile.keyPair(at: secretKeyFile)
        let allowed = try CurveKeyFile.publicKeys(at: allowListFile, requireOwnerOnly: true)
        guard !allowed.isEmpty else { throw .noKey(path: allowListFile) }
        return CurveServerSettings(keyPair: keyPair, allowedClients: Set(allowed))
    }
}

/// Who may connect. Loopback `tcp://` and `ipc://` endpoints reach only this machine; any
/// other endpoint needs CURVE, or `insecure` (which is logged as a warning).
enum ServerAccess {
    /// Refuses a reachable endpoint without CURVE unless told `insecure`.
    static func check(_ configuration: DaemonConfiguration, logger: Logger) throws {
        guard configuration.curve == nil, !isLocal(configuration.endpoint) else { return }
        guard configuration.insecure else { throw DaemonError.reachableWithoutCurve(configuration.endpoint) }
        logger.warning("serving without authentication or encryption on an endpoint other machines can reach: anyone who can connect can load files and run models",
                       metadata: ["endpoint": "\(configuration.endpoint)"])
    }

    /// `ipc://` and `inproc://`, and `tcp://` on a loopback address or the `lo` interface.
    static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        var host = String(endpoint.dropFirst("tcp://".count))
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "lo" || host == "::1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false).map { UInt8($0) }
        return octets.count == 4 && octets.allSatisfy { $0 != nil } && octets[0] == 127
    }

    /// Makes `socket` a CURVE server whose clients ZAP checks against the allow-list, for
    /// as long as the returned registration lives. Nil without CURVE.
    static func secure(_ socket: ZMQSocket, _ configuration: DaemonConfiguration, instance: String,
                       logger: Logger) throws(ZMQError) -> ZAPAuthenticator.Registration? {
        guard let curve = configuration.curve else { return nil }
        let domain = "loupe-" + instance
        let registration = try ZAPAuthenticator.shared.register(domain: domain, allowed: curve.allowedClients, logger: logger)
        try socket.makeCurveServer(curve.keyPair, zapDomain: domain)
        logger.info("CURVE on", metadata: ["public_key": "\(curve.keyPair.publicKey)", "allowed_keys": "\(curve.allowedClients.count)"])
        return registration
    }
}

/// The process's ZAP handler (RFC 27): libzmq asks it, over `inproc://zeromq.zap.01`, whether
/// each CURVE client may connect. One per ZeroMQ context, so every daemon in the process
/// shares it, each under its own ZAP domain with its own allow-list. It answers on a thread
/// of its own, started with the first registration and kept for the life of the process.
final class ZAPAuthenticator: Sendable {
    static let shared = ZAPAuthenticator()

    private struct Domain {
        let allowed: Set<CurveKey>
        let logger: Logger
    }

    private let domains = Mutex<[String: Domain]>([:])
    private let started = Mutex(false)

    /// Keeps a domain's allow-list in force until released.
    final class Registration: Sendable {
        let domain: String
        init(domain: String) { self.domain = domain }
        deinit { ZAPAuthenticator.shared.domains.withLock { $0[domain] = nil } }
    }

    func register(domain: String, allowed: Set<CurveKey>, logger: Logger) throws(ZMQError) -> Registration {
        try startOnce()
        domains.withLock { $0[domain] = Domain(allowed: allowed, logger: logger) }
        return Registration(domain: domain)
    }

    /// Binds the handler's socket (before any CURVE socket binds, so none goes unchecked)
    /// and starts its thread.
    private func startOnce() throws(ZMQError) {
        let result: Result<Void, ZMQError> = started.withLock { started in
            guard !started else { return .success(()) }
            let socket: ZMQSocket
            do throws(ZMQError) {
                socket = try ZMQSocket(.rep)
                try socket.bind("inproc://zeromq.zap.01")
            } catch {
                return .failure(error)
            }
            let handler = SocketBox(socket: socket)
            let thread = Thread { [self] in serve(handler.socket) }
            thread.name = "loupe-zap"
            thread.start()
            started = true
            return .success(())
        }
        try result.get()
    }

    private func serve(_ socket: ZMQSocket) {
        while true {
            let frames: [[UInt8]]
            do {
                guard let received = try socket.receive() else { continue } // interrupted
                frames = received
            } catch {
                Thread.sleep(forTimeInterval: 0.1) // never spin on a failing socket
                continue
            }
            // A REP socket must answer every request, even one it cannot read.
            guard frames.count >= 6 else {
                _ = try? socket.send([Array("1.0".utf8), frames.count > 1 ? frames[1] : [], Array("500".utf8),
                                      Array("malformed ZAP request".utf8), [], []])
                continue
            }
            // version, request id, domain, address, routing id, mechanism, credentials...
            let (version, requestID) = (frames[0], frames[1])
            let domainName = String(decoding: frames[2], as: UTF8.self)
            let address = String(decoding: frames[3], as: UTF8.self)
            let mechanism = String(decoding: frames[5], as: UTF8.self)
            let key = frames.count > 6 ? CurveKey(bytes: frames[6]) : nil
            let domain = domains.withLock { $0[domainName] }
            // Only CURVE sockets name a Loupe domain; a plain socket in the process that
            // libzmq asks about anyway is not this handler's to refuse.
            let allowed = domain == nil && mechanism == "NULL"
                || mechanism == "CURVE" && key.map { domain?.allowed.contains($0) ?? false } ?? false
            if !allowed {
                domain?.logger.warning("refused a client", metadata: ["address": "\(address)", "mechanism": "\(mechanism)",
                                                                       "key": "\(key?.z85 ?? "none")"])
            }
            let (code, text) = allowed ? ("200", "OK") : ("400", "key not allowed")
            _ = try? socket.send([version, requestID, Array(code.utf8), Array(text.utf8), Array((key?.z85 ?? "").utf8), []])
        }
    }
}

/// Hands the handler's socket to its thread, which alone uses it from then on.
private struct SocketBox: @unchecked Sendable {
    let socket: ZMQSocket
}
