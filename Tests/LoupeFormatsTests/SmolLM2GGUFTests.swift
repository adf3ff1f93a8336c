import Foundation
import LoupeFormats
import LoupeTensor
import XCTest

/// The real SmolLM2-135M-Instruct GGUF (Q4_1, 98 MB), fetched by scripts/fetch-models.sh.
/// These tests fail, not skip, when it is absent: the reader must be checked on a real file.
final class SmolLM2GGUFTests: XCTestCase {
    static let path = modelsDirectory + "/SmolLM2-135M-Instruct.Q4_1.gguf"

    /// Opened once for the whole class.
    static let file: Result<GGUFFile, any Error> = Result {
        guard FileManager.default.fileExists(atPath: path) else {
            throw FormatError(.notFound, file: path, "the SmolLM2 GGUF is missing: run scripts/fetch-models.sh (or set LOUPE_MODELS)")
        }
        return try GGUFFile(path: path)
    }

    func smol() throws -> GGUFFile {
        do {
            return try Self.file.get()
        } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    func testMetadata() throws {
        let file = try smol()
        XCTAssertEqual(file.version, 3)
        XCTAssertEqual(file.metadata["general.architecture"]?.stringValue, "llama")
        XCTAssertEqual(file.metadata["llama.block_count"]?.intValue, 30)
        XCTAssertEqual(file.metadata["llama.embedding_length"]?.intValue, 576)
        XCTAssertEqual(file.metadata["llama.attention.head_count"]?.intValue, 9)
        XCTAssertEqual(file.metadata["llama.attention.head_count_kv"]?.intValue, 3)
        XCTAssertEqual(file.metadata["llama.rope.freq_base"]?.doubleValue, 100000)
        XCTAssertEqual(file.metadata["tokenizer.ggml.model"]?.stringValue, "gpt2")
        XCTAssertEqual(file.metadata["tokenizer.ggml.pre"]?.stringValue, "smollm")
        let tokens = try XCTUnwrap(file.metadata["tokenizer.ggml.tokens"]?.stringArray)
        XCTAssertEqual(tokens.count, 49152)
        XCTAssertEqual(tokens[2322], "ĠJohn")
        XCTAssertEqual(tokens[5099], "ĠMary")
        XCTAssertEqual(file.metadata["tokenizer.ggml.merges"]?.stringArray?.count, 48900)
        XCTAssertEqual(file.metadata["tokenizer.ggml.token_type"]?.intArray?.count, 49152)

        var types: [String: Int] = [:]
        for name in file.tensorNames { types[file.typeName(of: name) ?? "?", default: 0] += 1 }
        XCTAssertEqual(types, ["Q4_1": 210, "F32": 61, "Q8_0": 1])
        XCTAssertEqual(file.typeName(of: "token_embd.weight"), "Q8_0")
        XCTAssertEqual(file.shape(of: "token_embd.weight"), [49152, 576])
        XCTAssertEqual(file.shape(of: "blk.0.ffn_down.weight"), [576, 1536])
        XCTAssertEqual(file.shape(of: "blk.0.attn_k.weight"), [192, 576])
    }

    /// First values, the start of the last row and whole-tensor sums agree with gguf-py
    /// (smollm2_expected.json, written by scripts/make_format_fixtures.py).
    func testTensorsMatchGGUFPy() throws {
        let file = try smol()
        let expected = try XCTUnwrap(JSONValue.parse(contentsOf: fixtures + "/smollm2_expected.json").objectValue)
        XCTAssertEqual(Set(expected.compactMap { $0.value["type"]?.stringValue }), ["Q8_0", "Q4_1", "F32"])
        for (name, entry) in expected {
            let shape = try XCTUnwrap(entry["shape"]?.arrayValue).compactMap(\.intValue)
            XCTAssertEqual(file.typeName(of: name), entry["type"]?.stringValue)
            let tensor = try file.tensor(name, shape: shape)
            let values = UnsafeBufferPointer(start: tensor.data, count: tensor.count)
            let first = try XCTUnwrap(entry["first"]?.arrayValue).compactMap(\.doubleValue).map(Float.init)
            assertSameBits(Array(values.prefix(first.count)), first, "\(name) first values")
            let lastRow = try XCTUnwrap(entry["last_row_first"]?.arrayValue).compactMap(\.doubleValue).map(Float.init)
            let rowStart = values.count - shape[shape.count - 1]
            assertSameBits(Array(values[rowStart..<(rowStart + lastRow.count)]), lastRow, "\(name) last row")
            var sum = 0.0, sumAbs = 0.0
            for v in values { sum += Double(v); sumAbs += abs(Double(v)) }
            let expectedSum = try XCTUnwrap(entry["sum"]?.doubleValue), expectedAbs = try XCTUnwrap(entry["sum_abs"]?.doubleValue)
            XCTAssertEqual(sum, expectedSum, accuracy: 1e-9 * expectedAbs, name)
            XCTAssertEqual(sumAbs, expectedAbs, accuracy: 1e-9 * expectedAbs, name)
        }
    }

    /// Every tensor converts; in a release build all of them take well under 1.5 s.
    func testDequantizesEveryTensorQuickly() throws {
        let file = try smol()
        let start = Date()
        var elements = 0
        for name in file.tensorNames {
            let tensor = try file.tensor(name)
            XCTAssertEqual(tensor.shape, file.shape(of: name))
            elements += tensor.count
        }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(elements, 134_515_008)
        print("SmolLM2: dequantized \(file.tensorNames.count) tensors (\(elements) floats) in \(String(format: "%.3f", elapsed)) s")
        #if !DEBUG
        XCTAssertLessThan(elapsed, 1.5)
        #endif
    }
}
