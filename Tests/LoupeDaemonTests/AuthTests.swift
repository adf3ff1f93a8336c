import Foundation
import Logging
import LoupeDaemon
import LoupeWire
import Synchronization
import XCTest

/// Who gets in: loopback and ipc by default; any other endpoint only with CURVE and an
/// allow-list, or an explicit `insecure`.
final class AuthTests: XCTestCase {
    private var directory = ""

    override func setUp() {
        directory = NSTemporaryDirectory() + "loupe-auth-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// A daemon on every interface with CURVE, and its allowed client's keys.
    private func curveDaemon() throws -> (live: LiveDaemon, endpoint: String, server: CurveKeyPair, client: CurveKeyPair) {
        let server = try CurveKeyPair.generate(), client = try CurveKeyPair.generate()
        let live = try LiveDaemon {
            $0.endpoint = "tcp://0.0.0.0:*"
            $0.curve = CurveServerSettings(keyPair: server, allowedClients: [client.publicKey])
        }
        let port = try XCTUnwrap(live.endpoint.split(separator: ":").last)
        return (live, "tcp://127.0.0.1:\(port)", server, client)
    }

    func testCurveIsAvailable() throws {
        XCTAssertNoThrow(try CurveKeyPair.generate(), "this libzmq lacks CURVE")
        let pair = try CurveKeyPair.generate()
        XCTAssertEqual(pair.publicKey.z85.count, 40)
        XCTAssertEqual(try CurveKeyPair(secretKey: pair.secretKey).publicKey, pair.publicKey, "the public half derives from the secret")
    }

    func testOnlyAnAllowedKeyGetsIn() throws {
        let (live, endpoint, server, client) = try curveDaemon()
        defer { live.stop() }
        let allowed = try WireClient(endpoint: endpoint, timeout: 10, curve: CurveClientKeys(serverKey: server.publicKey, client: client))
        XCTAssertEqual(try allowed.call("hello").body["server"], "loupe")

        // A stranger's key, the right client key against a wrong server key, and no CURVE at all.
        let stranger = CurveClientKeys(serverKey: server.publicKey, client: try CurveKeyPair.generate())
        let wrongServer = CurveClientKeys(serverKey: try CurveKeyPair.generate().publicKey, client: client)
        for (name, keys) in [("a key not on the list", stranger), ("a wrong server key", wrongServer), ("no CURVE", nil)] {
            let refused = try WireClient(endpoint: endpoint, timeout: 1, curve: keys)
            XCTAssertThrowsError(try refused.call("hello"), "\(name) got in") { error in
                guard case ClientError.noReply = error else { return XCTFail("\(name): \(error)") }
            }
            // The allowed client is not disturbed.
            XCTAssertEqual(try allowed.call("models.list").body["models"], [], name)
        }
        XCTAssertEqual(try allowed.call("server.stats").body["jobs"]?["running"], 0)
    }

    func testAReachableEndpointNeedsCurveOrInsecure() throws {
        for endpoint in ["tcp://0.0.0.0:*", "tcp://*:*"] {
            var configuration = DaemonConfiguration()
            configuration.endpoint = endpoint
            XCTAssertThrowsError(try Daemon(configuration: configuration, registry: Fixtures.registry(), logger: Fixtures.logger).start()) {
                XCTAssertTrue("\($0)".contains("--curve-secret-key") && "\($0)".contains("--insecure"), "\($0)")
            }
        }
        // Loopback (by address or interface) is served without keys.
        let loopback = try LiveDaemon { $0.endpoint = "tcp://lo:*" }
        XCTAssertEqual(try loopback.call("hello")["server"], "loupe")
        loopback.stop()

        // --insecure serves it, and says so at start.
        let log = LogCapture()
        var configuration = DaemonConfiguration()
        configuration.endpoint = "tcp://0.0.0.0:*"
        configuration.insecure = true
        let daemon = Daemon(configuration: configuration, registry: Fixtures.registry(), logger: log.logger)
        let bound = try daemon.start()
        defer { daemon.stop() }
        let port = try XCTUnwrap(bound.split(separator: ":").last)
        XCTAssertEqual(try WireClient(endpoint: "tcp://127.0.0.1:\(port)").call("hello").body["server"], "loupe")
        let warnings = log.entries.filter { $0.level == .warning }.map(\.message)
        XCTAssertTrue(warnings.contains { $0.contains("without authentication") }, "\(log.entries)")
    }

    func testKeyFilesAndTheAllowList() throws {
        let pair = try CurveKeyPair.generate()
        try CurveKeyFile.write(pair, prefix: directory + "/server")
        XCTAssertEqual(try permissions(directory + "/server.key"), 0o600)
        XCTAssertEqual(try CurveKeyFile.keyPair(at: directory + "/server.key").publicKey, pair.publicKey)
        XCTAssertThrowsError(try CurveKeyFile.write(pair, prefix: directory + "/server")) { XCTAssertTrue("\($0)".contains("already exists")) }

        let clients = try (0..<3).map { _ in try CurveKeyPair.generate().publicKey }
        let list = directory + "/allowed"
        try "# laptops\n\(clients[0]) alice\n\n\(clients[1])\n\(clients[2])\tbob\n".write(toFile: list, atomically: true, encoding: .utf8)
        chmod(list, 0o644)
        XCTAssertThrowsError(try CurveServerSettings.load(secretKeyFile: directory + "/server.key", allowListFile: list)) {
            XCTAssertEqual($0 as? CurveError, .tooOpen(path: list, mode: 0o644))
            XCTAssertTrue("\($0)".contains("chmod 600"), "\($0)")
        }
        chmod(list, 0o600)
        let settings = try CurveServerSettings.load(secretKeyFile: directory + "/server.key", allowListFile: list)
        XCTAssertEqual(settings.allowedClients, Set(clients))

        try "\(clients[0])\nnot-a-key\n".write(toFile: list, atomically: true, encoding: .utf8)
        chmod(list, 0o600)
        XCTAssertThrowsError(try CurveServerSettings.load(secretKeyFile: directory + "/server.key", allowListFile: list)) {
            XCTAssertEqual($0 as? CurveError, .badKey(path: list, line: 2))
        }
        chmod(directory + "/server.key", 0o640)
        XCTAssertThrowsError(try CurveKeyFile.keyPair(at: directory + "/server.key")) {
            XCTAssertEqual($0 as? CurveError, .tooOpen(path: self.directory + "/server.key", mode: 0o640))
        }
    }

    /// `loupe keygen`, `loupe serve`'s refusals, and a client command with keys.
    func testCommandLine() throws {
        for name in ["server", "client"] {
            let made = try LoupeProcess.run(["keygen", directory + "/" + name])
            XCTAssertEqual(made.status, 0, made.errors)
            XCTAssertTrue(made.output.contains("public key: "), made.output)
        }
        let allowList = directory + "/allowed"
        try FileManager.default.copyItem(atPath: directory + "/client.pub", toPath: allowList)
        chmod(allowList, 0o644)

        let open = try LoupeProcess.run(["serve", "--endpoint", "tcp://0.0.0.0:*"])
        XCTAssertNotEqual(open.status, 0)
        XCTAssertTrue(open.errors.contains("can be reached from other machines") && open.errors.contains("--allow-keys"), open.errors)
        let readable = try LoupeProcess.run(["serve", "--endpoint", "tcp://0.0.0.0:*", "--curve-secret-key", directory + "/server.key",
                                             "--allow-keys", allowList])
        XCTAssertNotEqual(readable.status, 0)
        XCTAssertTrue(readable.errors.contains("readable by others"), readable.errors)

        chmod(allowList, 0o600)
        let settings = try CurveServerSettings.load(secretKeyFile: directory + "/server.key", allowListFile: allowList)
        let live = try LiveDaemon {
            $0.endpoint = "tcp://127.0.0.1:*"
            $0.curve = settings
        }
        defer { live.stop() }
        let keys = ["--curve-server-key", directory + "/server.pub", "--curve-client-key", directory + "/client.key"]
        let ps = try LoupeProcess.run(["ps", "--endpoint", live.endpoint] + keys)
        XCTAssertEqual(ps.status, 0, ps.errors)
        XCTAssertEqual(ps.output, "no models loaded\n")
        // The same keys from the environment; the server key given as text.
        let serverKey = try String(contentsOfFile: directory + "/server.pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let fromEnvironment = try LoupeProcess.run(["ps", "--endpoint", live.endpoint], environment: [
            "LOUPE_CURVE_SERVER_KEY": serverKey, "LOUPE_CURVE_CLIENT_KEY": directory + "/client.key"])
        XCTAssertEqual(fromEnvironment.status, 0, fromEnvironment.errors)
        let without = try LoupeProcess.run(["ps", "--endpoint", live.endpoint, "--timeout", "1"])
        XCTAssertNotEqual(without.status, 0)
        XCTAssertTrue(without.errors.contains("no Loupe daemon answered"), without.errors)
    }

    private func permissions(_ path: String) throws -> Int {
        try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
    }
}

/// Keeps what a logger was told, for tests that check a warning was given.
final class LogCapture: Sendable {
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
    }

    private let stored = Mutex<[Entry]>([])
    var entries: [Entry] { stored.withLock { $0 } }

    var logger: Logger {
        Logger(label: "loupe.test.capture") { _ in Handler(capture: self) }
    }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            capture.stored.withLock { $0.append(Entry(level: event.level, message: event.message.description)) }
        }
    }
}
