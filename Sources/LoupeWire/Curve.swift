import CZMQ
import Foundation

/// A CURVE key (public or secret): 32 bytes, written as 40 characters of Z85 text as
/// ZeroMQ's own tools write them.
public struct CurveKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// The key from its 40-character Z85 text; nil when it is not one.
    public init?(z85 text: String) {
        guard text.utf8.count == 40 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 32)
        guard zmq_z85_decode(&bytes, text) != nil else { return nil }
        self.bytes = bytes
    }

    /// The key from its 32 raw bytes (as a ZAP request carries it).
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    public var z85: String {
        var text = [CChar](repeating: 0, count: 41)
        _ = zmq_z85_encode(&text, bytes, bytes.count)
        return String(decoding: text.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String { z85 }
}

/// A CURVE key pair: a server's, or a client's.
public struct CurveKeyPair: Sendable {
    public let publicKey: CurveKey
    public let secretKey: CurveKey

    /// A new random pair (libzmq's `zmq_curve_keypair`, from libsodium).
    public static func generate() throws(CurveError) -> CurveKeyPair {
        try CurveError.checkAvailable()
        var publicText = [CChar](repeating: 0, count: 41), secretText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicText, &secretText) == 0 else { throw .unavailable }
        let text = { (buffer: [CChar]) in String(decoding: buffer.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        guard let publicKey = CurveKey(z85: text(publicText)), let secretKey = CurveKey(z85: text(secretText)) else { throw .unavailable }
        return CurveKeyPair(publicKey: publicKey, secretKey: secretKey)
    }

    /// The pair of a secret key: its public half is derived from it.
    public init(secretKey: CurveKey) throws(CurveError) {
        try CurveError.checkAvailable()
        var publicText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&publicText, secretKey.z85) == 0,
              let publicKey = CurveKey(z85: String(decoding: publicText.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        else { throw .unavailable }
        self.init(publicKey: publicKey, secretKey: secretKey)
    }

    private init(publicKey: CurveKey, secretKey: CurveKey) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }
}

/// What a client needs to talk to a daemon that requires CURVE: the daemon's public key
/// and its own key pair (whose public half is on the daemon's allow-list).
public struct CurveClientKeys: Sendable {
    public let serverKey: CurveKey
    public let client: CurveKeyPair

    public init(serverKey: CurveKey, client: CurveKeyPair) {
        self.serverKey = serverKey
        self.client = client
    }

    /// From `LOUPE_CURVE_SERVER_KEY` (a key or a file holding it) and
    /// `LOUPE_CURVE_CLIENT_KEY` (a secret key file); nil when neither is set.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(CurveError) -> CurveClientKeys? {
        try load(serverKey: environment["LOUPE_CURVE_SERVER_KEY"], clientKeyFile: environment["LOUPE_CURVE_CLIENT_KEY"])
    }

    /// `serverKey`: a Z85 public key or a file holding one; `clientKeyFile`: a secret key
    /// file (owner-only). Both or neither.
    public static func load(serverKey: String?, clientKeyFile: String?) throws(CurveError) -> CurveClientKeys? {
        switch (serverKey, clientKeyFile) {
        case (nil, nil): return nil
        case (let server?, let client?):
            var serverKey = CurveKey(z85: server)
            if serverKey == nil { serverKey = try CurveKeyFile.publicKeys(at: server, requireOwnerOnly: false).first }
            guard let serverKey else { throw .noKey(path: server) }
            return CurveClientKeys(serverKey: serverKey, client: try CurveKeyFile.keyPair(at: client))
        default:
            throw .incomplete
        }
    }
}

/// Key files. A secret key file holds one Z85 secret key; a public key file (or allow-list)
/// one Z85 public key per line, optionally followed by a label. Lines starting with `# `
/// are comments. A secret key file and an allow-list must be readable by their owner only.
public enum CurveKeyFile {
    /// The pair of the secret key in `path`.
    public static func keyPair(at path: String) throws(CurveError) -> CurveKeyPair {
        guard let secret = try keys(at: path, requireOwnerOnly: true).first else { throw .noKey(path: path) }
        return try CurveKeyPair(secretKey: secret)
    }

    /// The public keys in `path`, in file order.
    public static func publicKeys(at path: String, requireOwnerOnly: Bool) throws(CurveError) -> [CurveKey] {
        try keys(at: path, requireOwnerOnly: requireOwnerOnly)
    }

    /// Writes `PREFIX.key` (the secret key, mode 600) and `PREFIX.pub` (the public key).
    /// Refuses to overwrite either.
    public static func write(_ pair: CurveKeyPair, prefix: String) throws(CurveError) {
        let (secretPath, publicPath) = (prefix + ".key", prefix + ".pub")
        for path in [secretPath, publicPath] where FileManager.default.fileExists(atPath: path) {
            throw .exists(path: path)
        }
        try create(secretPath, mode: 0o600, "# Loupe CURVE secret key: keep it private (its public key is in \(URL(fileURLWithPath: publicPath).lastPathComponent))\n\(pair.secretKey.z85)\n")
        try create(publicPath, mode: 0o644, "\(pair.publicKey.z85)\n")
    }

    private static func create(_ path: String, mode: mode_t, _ text: String) throws(CurveError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard descriptor >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        guard Glibc.write(descriptor, bytes, bytes.count) == bytes.count else {
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
    }

    private static func keys(at path: String, requireOwnerOnly: Bool) throws(CurveError) -> [CurveKey] {
        var status = stat()
        guard stat(path, &status) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        if requireOwnerOnly, status.st_mode & 0o077 != 0 {
            throw .tooOpen(path: path, mode: Int(status.st_mode & 0o777))
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw .unreadable(path: path, reason: "\(error.localizedDescription)")
        }
        var keys = [CurveKey]()
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let word = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).first.map(String.init) ?? ""
            // Z85 has '#' among its characters: a line is a key if its first word is one.
            if let key = CurveKey(z85: word) {
                keys.append(key)
            } else if !word.isEmpty && !word.hasPrefix("#") {
                throw .badKey(path: path, line: index + 1)
            }
        }
        return keys
    }
}

public enum CurveError: Error, Sendable, Equatable, CustomStringConvertible {
    /// libzmq was built without CURVE (libsodium).
    case unavailable
    case unreadable(path: String, reason: String)
    /// A secret key or allow-list that others may read.
    case tooOpen(path: String, mode: Int)
    case badKey(path: String, line: Int)
    case noKey(path: String)
    case exists(path: String)
    /// A server key without a client key, or the other way round.
    case incomplete

    static func checkAvailable() throws(CurveError) {
        guard zmq_has("curve") != 0 else { throw .unavailable }
    }

    public var description: String {
        switch self {
        case .unavailable: return "this libzmq has no CURVE support (it was built without libsodium)"
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        case .tooOpen(let path, let mode):
            return String(format: "%@ is readable by others (mode %o): it must be readable by its owner only; run chmod 600 %@", path, mode, path)
        case .badKey(let path, let line): return "\(path), line \(line): not a 40-character Z85 CURVE key"
        case .noKey(let path): return "\(path) holds no CURVE key"
        case .exists(let path): return "\(path) already exists; not overwriting it"
        case .incomplete: return "a CURVE client needs both the server's public key and its own secret key file"
        }
    }
}

extension ZMQSocket {
    public func setOption(_ option: Int32, bytes: [UInt8]) throws(ZMQError) {
        guard zmq_setsockopt(handle, option, bytes, bytes.count) == 0 else { throw ZMQError("zmq_setsockopt(\(option))") }
    }

    /// Makes this socket a CURVE server that asks ZAP (domain `domain`) about each client.
    public func makeCurveServer(_ keys: CurveKeyPair, zapDomain domain: String) throws(ZMQError) {
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: keys.secretKey.bytes)
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8))
    }

    /// Makes this socket a CURVE client of the server with `keys.serverKey`.
    public func makeCurveClient(_ keys: CurveClientKeys) throws(ZMQError) {
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: keys.serverKey.bytes)
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: keys.client.publicKey.bytes)
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: keys.client.secretKey.bytes)
    }
}
