import Foundation
import Logging
import LoupeDaemon
import LoupeModels
import LoupeTestSupport
import LoupeTrace
import LoupeWire
import XCTest

/// A daemon serving on a fresh ipc socket in this process, for one test or one class.
final class LiveDaemon: Sendable {
    let daemon: Daemon
    let endpoint: String

    init(_ adjust: (inout DaemonConfiguration) -> Void = { _ in }) throws {
        var configuration = DaemonConfiguration()
        configuration.endpoint = "ipc://" + NSTemporaryDirectory() + "loupe-test-\(UUID().uuidString.prefix(8)).sock"
        configuration.modelsDirectory = Fixtures.modelsDirectory
        // The fixtures, the temporary directories tests write models to, and Loupe's own
        // model directory (SmolLM2).
        configuration.modelRoots = [Fixtures.modelsDirectory, NSTemporaryDirectory(), DaemonConfiguration.loupeModelsDirectory]
        configuration.debugOps = true
        adjust(&configuration)
        daemon = Daemon(configuration: configuration, registry: Fixtures.registry(), interventions: Fixtures.interventions(),
                        logger: Fixtures.logger)
        endpoint = try daemon.start()
    }

    func client(timeout: Double = 60) throws -> WireClient {
        try WireClient(endpoint: endpoint, timeout: timeout)
    }

    /// One request on a new connection; the ok reply's body.
    @discardableResult
    func call(_ op: String, _ fields: [String: MessageValue] = [:]) throws -> MessageValue {
        try client().call(op, fields).body
    }

    /// One request that must fail with `code`; the error.
    @discardableResult
    func expectError(_ code: ErrorCode, _ op: String, _ fields: [String: MessageValue] = [:],
                     file: StaticString = #filePath, line: UInt = #line) throws -> ProtocolError {
        do {
            let reply = try call(op, fields)
            XCTFail("\(op) succeeded, expected \(code.rawValue): \(reply)", file: file, line: line)
        } catch ClientError.daemon(let error) {
            XCTAssertEqual(error.code, code, error.message, file: file, line: line)
            return error
        }
        return ProtocolError(.internalError, "unreachable")
    }

    func stop() { daemon.stop() }
}

/// Where the test models are, and what the daemon needs to run them.
enum Fixtures {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    /// The tiny committed models: HF directories without tokenizers (token ids only).
    static let modelsDirectory = repository + "/Tests/Fixtures/models"
    static let gpt2Tiny = modelsDirectory + "/gpt2-tiny"
    static let llamaTiny = modelsDirectory + "/llama-tiny"

    /// SmolLM2, fetched by scripts/fetch-models.sh. Tests that need it fail (not skip) without it.
    static func smol() throws -> String {
        let directory = ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? (NSHomeDirectory() + "/.cache/loupe/models")
        let path = directory + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw MissingModel(path: path) }
        return path
    }

    struct MissingModel: Error, CustomStringConvertible {
        let path: String
        var description: String { "\(path) is missing: run scripts/fetch-models.sh" }
    }

    static func registry() -> ArchitectureRegistry { testRegistry }

    static func interventions() -> InterventionRegistry { testInterventions }

    /// Quiet unless LOUPE_TEST_LOG is set (to a level: debug, info...).
    static let logger: Logger = {
        guard let level = ProcessInfo.processInfo.environment["LOUPE_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) else {
            return Logger(label: "loupe.test", factory: { _ in SwiftLogNoOpLogHandler() })
        }
        var handler = StreamLogHandler.standardError(label: "loupe.test")
        handler.logLevel = level
        return Logger(label: "loupe.test", factory: { _ in handler })
    }()

    static let cleanPrompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
    static let corruptedPrompt = "After John and Mary went to the store, John gave a bottle of milk to"
}
