import Foundation
import LoupeFormats
import LoupeModels
import LoupeTestSupport
import XCTest

/// A checkpoint that cannot run gets a typed error naming the file and the tensor or key.
final class LoadErrorTests: XCTestCase {
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
            XCTAssertEqual(Set(known), ["gpt2", "llama", "qwen2", "qwen3", "gpt_neox", "gemma3_text", "gemma3", "gemma2", "mistral"])
        }
    }

    /// As transformers 5 reads a config: a `rope_scaling` replaces `rope_parameters` whole, and
    /// the applying parameters' `rope_theta` wins over the top-level one.
    func testRopeScalingReplacesRopeParameters() throws {
        func logits(_ source: String) throws -> [Float] {
            try LoadedModel.load(source, registry: testRegistry).model.forward(TokenBatch([[5, 300, 17, 42, 9, 511, 0, 77]])).toArray()
        }
        let reference = try logits(fixturesDirectory + "/models/llama3-tiny")  // rope_scaling llama3, top-level rope_theta 500000
        XCTAssertEqual(try logits(try checkpoint("llama3-tiny") { $0["rope_parameters"] = ["rope_type": "default", "rope_theta": 500_000.0] }),
                       reference)
        let theta = try checkpoint("llama3-tiny") {
            var scaling = $0["rope_scaling"] as! [String: Any]
            scaling["rope_theta"] = 10_000.0
            $0["rope_scaling"] = scaling
        }
        XCTAssertNotEqual(try logits(theta), reference, "rope_scaling's own rope_theta is the one used")
    }

    /// RoPE scalings other than Llama 3's, in transformers 4's form and 5's, are refused naming the key and the type.
    func testOtherRopeScalingsAreRefused() throws {
        assertBadConfig(try checkpoint("llama3-tiny") { $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4.0] },
                        key: "rope_scaling.rope_type", mentioning: "yarn")
        assertBadConfig(try checkpoint("llama3-tiny") { $0["rope_scaling"] = ["type": "linear", "factor": 4.0] },
                        key: "rope_scaling.rope_type", mentioning: "linear")
        assertBadConfig(try checkpoint("llama-tiny-untied") { $0["rope_parameters"] = ["rope_type": "dynamic", "rope_theta": 500000.0, "factor": 2.0] },
                        key: "rope_parameters.rope_type", mentioning: "dynamic")
        assertBadConfig(try checkpoint("qwen2-tiny") { $0["rope_parameters"] = ["rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0] },
                        key: "rope_parameters.rope_type", mentioning: "yarn")
        assertBadConfig(try checkpoint("llama3-tiny") { config in
            var scaling = config["rope_scaling"] as! [String: Any]
            scaling.removeValue(forKey: "low_freq_factor")
            config["rope_scaling"] = scaling
        }, key: "rope_scaling.low_freq_factor", mentioning: "llama3")
    }

    /// Qwen2 and Qwen3 with sliding-window attention are refused: Loupe attends over the whole prefix.
    func testSlidingWindowIsRefused() throws {
        for fixture in ["qwen2-tiny", "qwen3-tiny"] {
            assertBadConfig(try checkpoint(fixture) { $0["use_sliding_window"] = true; $0["sliding_window"] = 4 },
                            key: "use_sliding_window", mentioning: "true")
            assertBadConfig(try checkpoint(fixture) { $0["layer_types"] = ["full_attention", "sliding_attention"] },
                            key: "layer_types", mentioning: "sliding_attention")
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

    func assertBadConfig(_ source: String, key expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry), file: file, line: line) { error in
            guard case ModelError.badConfig(let path, let key, _) = error else {
                return XCTFail("expected a config error naming \(expected), got \(error)", file: file, line: line)
            }
            XCTAssertEqual(key, expected, "\(error)", file: file, line: line)
            XCTAssertTrue(path.hasSuffix("config.json"), path, file: file, line: line)
        }
    }

    /// Sizes no model has are refused before anything is allocated (a layer count of 10^12
    /// once reserved an array that size and aborted the process), naming the key and value.
    func testAbsurdSizesAreRefusedNamingTheKey() throws {
        for (key, value) in [("n_layer", 1_000_000_000_000), ("n_layer", -1), ("n_layer", 0), ("n_embd", 1 << 40),
                             ("n_head", 0), ("n_positions", Int(Int32.max)), ("vocab_size", -5), ("n_inner", 1 << 30)] {
            assertBadConfig(try checkpoint("gpt2-tiny") { $0[key] = value }, key: key)
        }
        for (key, value) in [("num_hidden_layers", 1_000_000_000_000), ("hidden_size", -64), ("num_attention_heads", 0),
                             ("num_key_value_heads", -2), ("head_dim", 1 << 20), ("intermediate_size", 0),
                             ("vocab_size", 1 << 40), ("max_position_embeddings", 1 << 40)] {
            assertBadConfig(try checkpoint("llama-tiny") { $0[key] = value }, key: key)
        }
        // Heads that do not divide the hidden size, with no head_dim to say otherwise.
        assertBadConfig(try checkpoint("llama-tiny") { $0["num_attention_heads"] = 5; $0["head_dim"] = nil }, key: "num_attention_heads")
        assertBadConfig(try checkpoint("gpt2-tiny") { $0["n_head"] = 5 }, key: "n_head")
    }

    /// A config whose values could only make every result NaN does not load.
    func testValuesThatOnlyMakeNaNAreRefused() throws {
        for (key, value) in [("rms_norm_eps", -1e-6), ("rms_norm_eps", 0.0), ("rope_theta", -10_000.0)] {
            assertBadConfig(try checkpoint("llama-tiny") { $0[key] = value }, key: key)
        }
        assertBadConfig(try checkpoint("gpt2-tiny") { $0["layer_norm_epsilon"] = -1e-5 }, key: "layer_norm_epsilon")
        // NaN and Infinity as Python's json.dump writes them.
        for (fixture, key, value) in [("gpt2-tiny", "layer_norm_epsilon", "NaN"), ("llama-tiny", "rope_theta", "Infinity"),
                                      ("llama-tiny", "rms_norm_eps", "NaN")] {
            let directory = try checkpoint(fixture) { $0[key] = nil }
            let config = try String(contentsOfFile: directory + "/config.json", encoding: .utf8)
            try config.replacingOccurrences(of: "{", with: #"{"\#(key)": \#(value), "#)
                .write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
            assertBadConfig(directory, key: key)
        }
    }

    /// A value of the wrong kind is an error naming the key, not a silent default.
    func testWrongTypesAreRefused() throws {
        assertFormatError(try checkpoint("llama-tiny") { $0["num_key_value_heads"] = "two" }, .badValue, item: "num_key_value_heads")
        assertFormatError(try checkpoint("gpt2-tiny") { $0["scale_attn_weights"] = 1.5 }, .badValue, item: "scale_attn_weights")
        assertFormatError(try checkpoint("llama-tiny") { $0["tie_word_embeddings"] = "yes" }, .badValue, item: "tie_word_embeddings")
    }

    /// A NaN or infinity in a weight is refused naming the tensor.
    func testNonFiniteWeightsAreRefused() throws {
        for (fixture, tensor) in [("gpt2-tiny", "transformer.h.1.ln_2.weight"), ("llama-tiny", "model.norm.weight")] {
            for bad in [Float.nan, -Float.infinity] {
                let directory = try checkpoint(fixture) { _ in }
                try poke(directory + "/model.safetensors", tensor: tensor, element: 3, bad)
                assertFormatError(directory, .badValue, item: tensor)
            }
        }
    }

    /// Writes `value` over one float32 element of a safetensors file's tensor.
    private func poke(_ path: String, tensor: String, element: Int, _ value: Float) throws {
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + headerLength))) as! [String: Any]
        let entry = header[tensor] as! [String: Any]
        XCTAssertEqual(entry["dtype"] as? String, "F32")
        let begin = (entry["data_offsets"] as! [Int])[0]
        let offset = 8 + headerLength + begin + 4 * element
        withUnsafeBytes(of: value.bitPattern.littleEndian) { data.replaceSubrange(offset..<(offset + 4), with: $0) }
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// A model larger than the limit is refused from its headers, before a weight is read.
    func testModelOverTheLimitIsRefusedFromItsHeaders() throws {
        let source = fixturesDirectory + "/models/llama-tiny"
        XCTAssertThrowsError(try LoadedModel.load(source, registry: testRegistry, maxBytes: 64 << 10)) { error in
            guard case ModelError.modelTooLarge(_, let bytes, let limit) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(limit, 64 << 10)
            XCTAssertGreaterThan(bytes ?? 0, 64 << 10)
        }
        XCTAssertNoThrow(try LoadedModel.load(source, registry: testRegistry, maxBytes: 64 << 20))
    }

    /// Without `tie_word_embeddings` each architecture ties as its HF config class defaults:
    /// LlamaConfig not (so its own lm_head.weight is used), GPT2Config so.
    func testTieDefaultsAsEachHFConfigClass() throws {
        let fixture = fixturesDirectory + "/models/llama-tiny-untied"
        let untied = try checkpoint("llama-tiny-untied") { $0["tie_word_embeddings"] = nil }
        let batch = TokenBatch([[1, 2, 3, 4]])
        let expected = try LoadedModel.load(fixture, registry: testRegistry).model.forward(batch)
        let loaded = try LoadedModel.load(untied, registry: testRegistry).model.forward(batch)
        XCTAssertEqual(expected.toArray(), loaded.toArray())
    }

    /// A cancelled load stops at its next tensor.
    func testCancelledLoadStops() throws {
        let control = LoadControl()
        control.cancel()
        XCTAssertThrowsError(try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry, control: control)) {
            XCTAssertTrue($0 is LoadCancelled, "\($0)")
        }
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
