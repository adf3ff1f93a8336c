import Foundation
import GPT2
import Llama
import LoupeFormats
import LoupeModels
import LoupeTensor
import XCTest

/// The registry every test uses: both architecture plugins, registered as the daemon does.
let testRegistry: ArchitectureRegistry = {
    let registry = ArchitectureRegistry()
    registry.register(GPT2Architecture.self)
    registry.register(LlamaArchitecture.self)
    return registry
}()

/// Tests/Fixtures, found from this source file.
let fixturesDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// The directory scripts/fetch-models.sh fills; the test command runs it first.
let modelsDirectory: String = ProcessInfo.processInfo.environment["LOUPE_MODELS"]
    ?? (NSHomeDirectory() + "/.cache/loupe/models")

/// A file fetched by scripts/fetch-models.sh; fails the test (never skips) when it is absent.
func fetchedModel(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let path = modelsDirectory + "/" + name
    guard FileManager.default.fileExists(atPath: path) else {
        XCTFail("\(path) is missing: run scripts/fetch-models.sh (the README's test command does)", file: file, line: line)
        throw CocoaError(.fileNoSuchFile)
    }
    return path
}

/// Largest |a - b| over two tensors of the same shape.
func maxDifference(_ a: Tensor, _ b: Tensor, file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(a.shape, b.shape, "shapes differ", file: file, line: line)
    guard a.shape == b.shape else { return .infinity }
    return zip(a.toArray(), b.toArray()).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

func assertClose(_ actual: Tensor, _ expected: Tensor, tolerance: Float = 1e-4, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    let difference = maxDifference(actual, expected, file: file, line: line)
    XCTAssertLessThanOrEqual(difference, tolerance, "\(what): max |difference| \(difference)", file: file, line: line)
}
