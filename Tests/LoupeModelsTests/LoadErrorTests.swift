import Foundation
import LoupeFormats
import LoupeModels
import LoupeTestSupport
import XCTest

/// A checkpoint that cannot run gets a typed error naming the file and the tensor or key.
final class LoadErrorTests: XCTestCase {
    /// A copy of a fixture model in a temporary directory, with its config edited.
    func checkpoint(_ fixture: String, editing edit: (inout [String: Any]) -> Void) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        let source = fixturesDirectory + "/models/" + fixture
        try FileManager.default.copyItem(atPath: source + "/model.safetensors", toPath: directory + "/model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
        return directory
    }

    func assertFormatError(_ source: String, _ kind: FormatError.Kind, item: String?,
                           file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry), file: file, line: line) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("expected a format error, got \(error)", file: file, line: line) }
            XCTAssertEqual(format.kind, kind, format.description, file: file, line: line)
            XCTAssertEqual(format.item, item, format.description, file: file, line: line)
            XCTAssertFalse(format.file.isEmpty, file: file, line: line)
        }
    }

    func testConfigThatDisagreesWithWeights() throws {
        assertFormatError(try checkpoint("gpt2-tiny") { $0["n_embd"] = 32 }, .shapeMismatch, item: "transformer.wte.weight")
        assertFormatError(try checkpoint("llama-tiny") { $0["num_key_value_heads"] = 4 }, .shapeMismatch,
                          item: "model.layers.0.self_attn.k_proj.weight")
        assertFormatError(try checkpoint("llama-tiny") { $0["intermediate_size"] = 100 }, .shapeMismatch,
                          item: "model.layers.0.mlp.gate_proj.weight")
    }

    func testMissingTensor() throws {
        assertFormatError(try checkpoint("gpt2-tiny") { $0["n_layer"] = 3 }, .missingTensor, item: "transformer.h.2.ln_1.weight")
        assertFormatError(try checkpoint("llama-tiny") { $0["tie_word_embeddings"] = false }, .missingTensor, item: "lm_head.weight")
    }

    func testMissingOrBadKey() throws {
        assertFormatError(try checkpoint("gpt2-tiny") { $0.removeValue(forKey: "n_layer") }, .missingKey, item: "n_layer")
        assertFormatError(try checkpoint("llama-tiny") { $0["hidden_size"] = "wide" }, .badValue, item: "hidden_size")
        assertFormatError(try checkpoint("llama-tiny") { $0.removeValue(forKey: "model_type") }, .missingKey, item: "model_type")
    }

    func testUnknownArchitecture() throws {
        let source = try checkpoint("gpt2-tiny") { $0["model_type"] = "mamba" }
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry)) { error in
            guard case ModelError.unknownArchitecture(let type, let known) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(type, "mamba")
            XCTAssertEqual(Set(known), ["gpt2", "llama"])
        }
    }

    func testImpossibleHeadGrouping() throws {
        let source = try checkpoint("llama-tiny") { $0["num_key_value_heads"] = 3 }
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry)) { error in
            guard case ModelError.badConfig(_, let key, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "num_key_value_heads")
        }
    }

    func testTruncatedWeights() throws {
        let directory = try checkpoint("gpt2-tiny") { _ in }
        let path = directory + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try LoadedModel.load(directory, registry: testRegistry)) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(format.kind, .truncated, format.description)
            XCTAssertTrue(format.file.hasSuffix("model.safetensors"), format.file)
        }
    }

    func testNothingThere() {
        assertFormatError("/nonexistent/model", .notFound, item: nil)
    }
}

/// A model named by its HF id loads from the local HF cache, with no network.
final class HFCacheLoadingTests: XCTestCase {
    func testHFIdResolvesInTheLocalCache() throws {
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-hub-\(UUID().uuidString)").path
        let snapshot = cache + "/models--loupe-tests--gpt2-tiny/snapshots/0123abcd"
        try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: cache + "/models--loupe-tests--gpt2-tiny/refs", withIntermediateDirectories: true)
        try "0123abcd".write(toFile: cache + "/models--loupe-tests--gpt2-tiny/refs/main", atomically: true, encoding: .utf8)
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: fixturesDirectory + "/models/gpt2-tiny/" + file, toPath: snapshot + "/" + file)
        }
        let previous = ProcessInfo.processInfo.environment["HF_HUB_CACHE"]
        setenv("HF_HUB_CACHE", cache, 1)
        defer {
            if let previous { setenv("HF_HUB_CACHE", previous, 1) } else { unsetenv("HF_HUB_CACHE") }
            try? FileManager.default.removeItem(atPath: cache)
        }
        let loaded = try LoadedModel.load("loupe-tests/gpt2-tiny", registry: testRegistry)
        XCTAssertEqual(loaded.resolvedPath, snapshot)
        XCTAssertEqual(loaded.model.architecture, "gpt2")
        XCTAssertThrowsError(try LoadedModel.load("loupe-tests/absent", registry: testRegistry)) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(format.kind, .notFound)
        }
    }
}
