import BuiltInPlugins
import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace
import XCTest

// What the test targets share: where the fixtures and fetched models are, the plugin
// registry, a seeded generator and tensor comparisons.

/// The built-in architectures, registered as the daemon does.
public let testRegistry = BuiltInPlugins.architectureRegistry()

/// The built-in interventions, registered as the daemon does.
public let testInterventions = BuiltInPlugins.interventionRegistry()

/// Tests/Fixtures.
public let fixturesDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// The directory scripts/fetch-models.sh fills; the test command runs it first.
public let modelsDirectory: String = ProcessInfo.processInfo.environment["LOUPE_MODELS"]
    ?? (NSHomeDirectory() + "/.cache/loupe/models")

/// A file fetched by scripts/fetch-models.sh; fails the test (never skips) when it is absent.
public func fetchedModel(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let path = modelsDirectory + "/" + name
    guard FileManager.default.fileExists(atPath: path) else {
        XCTFail("\(path) is missing: run scripts/fetch-models.sh (the README's test command does)", file: file, line: line)
        throw CocoaError(.fileNoSuchFile)
    }
    return path
}

/// A small deterministic generator (generation's SplitMix64), so random inputs are the same
/// every run and a failure can be replayed.
public struct SeededGenerator: RandomNumberGenerator {
    private var generator: SplitMix64
    public init(seed: UInt64) { generator = SplitMix64(seed: Int(Int64(bitPattern: seed)), invocation: 0) }
    public mutating func next() -> UInt64 { generator.next() }
}

/// Largest |a - b| over two tensors of the same shape.
public func maxDifference(_ a: Tensor, _ b: Tensor, file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(a.shape, b.shape, "shapes differ", file: file, line: line)
    guard a.shape == b.shape else { return .infinity }
    return zip(a.toArray(), b.toArray()).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// Fails unless `actual` exists and is within `tolerance` of `expected` everywhere.
public func assertClose(_ actual: Tensor?, _ expected: Tensor, tolerance: Float = 1e-4, _ what: String,
                        file: StaticString = #filePath, line: UInt = #line) {
    guard let actual else { return XCTFail("\(what): missing", file: file, line: line) }
    let difference = maxDifference(actual, expected, file: file, line: line)
    XCTAssertLessThanOrEqual(difference, tolerance, "\(what): max |difference| \(difference)", file: file, line: line)
}

extension XCTestCase {
    /// A copy of a fixture model in a temporary directory (removed after the test), its
    /// config edited.
    public func checkpoint(_ fixture: String, editing edit: (inout [String: Any]) -> Void) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        let source = fixturesDirectory + "/models/" + fixture
        try FileManager.default.copyItem(atPath: source + "/model.safetensors", toPath: directory + "/model.safetensors")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))) as? [String: Any])
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
        return directory
    }

    /// Loading `source` is refused with a config error naming `key`, its message mentioning `value`.
    public func assertBadConfig(_ source: String, key: String, mentioning value: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry), file: file, line: line) { error in
            guard case ModelError.badConfig(_, let badKey, let message) = error else { return XCTFail("\(error)", file: file, line: line) }
            XCTAssertEqual(badKey, key, message, file: file, line: line)
            XCTAssertTrue(message.contains(value), message, file: file, line: line)
        }
    }
}
