import Foundation
import LoupeFormats
import LoupeTokenizers
import XCTest

/// Bad files are `TokenizerError`s that name the file and the entry at fault.
final class ErrorTests: XCTestCase {
    private func tokenizerJSON(_ edit: (inout [String: Any]) -> Void = { _ in }) -> [String: Any] {
        Fixtures.smallTokenizerJSON(vocab: ["a": 0, "b": 1, "ab": 2, "Ġ": 3], merges: [["a", "b"]], edit)
    }

    private func write(_ json: [String: Any]) throws -> String {
        try Fixtures.write(json, in: Fixtures.temporaryDirectory(self))
    }

    private func write(_ text: String, name: String, in directory: String) throws -> String {
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs `body`, which must throw a TokenizerError of `kind` naming a file ending in `file`
    /// and the entry `item`; `mentioning` must appear in its description.
    private func assertError(_ kind: TokenizerError.Kind, file: String, item: String?, mentioning: String? = nil,
                             line: UInt = #line, _ body: () throws -> Tokenizer) {
        do {
            _ = try body()
            XCTFail("no error", line: line)
        } catch let error as TokenizerError {
            XCTAssertEqual(error.kind, kind, "\(error)", line: line)
            XCTAssert(error.file.hasSuffix(file), "file in \(error)", line: line)
            XCTAssertEqual(error.item, item, "\(error)", line: line)
            if let mentioning { XCTAssert(error.description.contains(mentioning), "\(error)", line: line) }
        } catch {
            XCTFail("not a TokenizerError: \(error)", line: line)
        }
    }

    func testTheSmallFileIsValid() throws {
        let tokenizer = try Tokenizer.load(tokenizerJSON: write(tokenizerJSON()))
        XCTAssertEqual(tokenizer.encode("ab a"), [2, 3, 0])
        XCTAssertEqual(tokenizer.decode([2, 3, 0]), "ab a")
        XCTAssertNil(tokenizer.bosTokenID)
    }

    func testMergeNamingAnUnknownTokenIsNamed() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        let vocab = try write(#"{"a": 0, "b": 1, "ab": 2}"#, name: "vocab.json", in: directory)
        let merges = try write("#version: 0.2\na b\na c\n", name: "merges.txt", in: directory)
        assertError(.unknownToken, file: "merges.txt", item: "line 3", mentioning: "\"c\"") {
            try Tokenizer.load(vocabJSON: vocab, merges: merges)
        }
        let json = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["merges"] = [["a", "b"], ["b", "a"]]  // "ba" is not in the vocabulary
            json["model"] = model
        })
        assertError(.unknownToken, file: "tokenizer.json", item: "model.merges[1]", mentioning: "\"ba\"") {
            try Tokenizer.load(tokenizerJSON: json)
        }
    }

    func testMalformedMergeLineIsNamed() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        let vocab = try write(#"{"a": 0, "b": 1, "ab": 2}"#, name: "vocab.json", in: directory)
        let merges = try write("#version: 0.2\na b c\n", name: "merges.txt", in: directory)
        assertError(.badValue, file: "merges.txt", item: "line 2") { try Tokenizer.load(vocabJSON: vocab, merges: merges) }
    }

    func testMissingVocabulary() throws {
        let json = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["vocab"] = nil
            json["model"] = model
        })
        assertError(.missingKey, file: "tokenizer.json", item: "model.vocab") { try Tokenizer.load(tokenizerJSON: json) }
        let directory = try Fixtures.temporaryDirectory(self)
        assertError(.io, file: "vocab.json", item: nil) {
            try Tokenizer.load(vocabJSON: directory + "/vocab.json", merges: directory + "/merges.txt")
        }
        assertError(.missingKey, file: directory, item: nil, mentioning: "tokenizer.json") { try Tokenizer.load(directory: directory) }
    }

    func testNotJSON() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        let path = try write("{\"model\": ", name: "tokenizer.json", in: directory)
        assertError(.badValue, file: "tokenizer.json", item: nil, mentioning: "not valid JSON") { try Tokenizer.load(tokenizerJSON: path) }
    }

    func testUnknownPreTokenizersAreRejected() throws {
        let whitespace = try write(tokenizerJSON { $0["pre_tokenizer"] = ["type": "Whitespace"] })
        assertError(.unsupported, file: "tokenizer.json", item: "pre_tokenizer.type", mentioning: "Whitespace") {
            try Tokenizer.load(tokenizerJSON: whitespace)
        }
        let split = try write(tokenizerJSON {
            $0["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": "\\w+|\\s+"], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]]]
        })
        assertError(.unsupported, file: "tokenizer.json", item: "pre_tokenizer.pretokenizers[0].pattern", mentioning: "\\w+") {
            try Tokenizer.load(tokenizerJSON: split)
        }
        let noByteLevel = try write(tokenizerJSON { $0["pre_tokenizer"] = ["type": "Digits", "individual_digits": true] })
        assertError(.unsupported, file: "tokenizer.json", item: "pre_tokenizer", mentioning: "ByteLevel") {
            try Tokenizer.load(tokenizerJSON: noByteLevel)
        }
        let normalizer = try write(tokenizerJSON { $0["normalizer"] = ["type": "NFC"] })
        assertError(.unsupported, file: "tokenizer.json", item: "normalizer") { try Tokenizer.load(tokenizerJSON: normalizer) }
        let wordPiece = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["type"] = "WordPiece"
            json["model"] = model
        })
        assertError(.unsupported, file: "tokenizer.json", item: "model.type") { try Tokenizer.load(tokenizerJSON: wordPiece) }
    }

    /// GGUF metadata built by hand: the same tiny vocabulary.
    private func metadata(_ edit: (inout [String: GGUFValue]) -> Void = { _ in }) -> [String: GGUFValue] {
        var metadata: [String: GGUFValue] = [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.pre": .string("gpt2"),
            "tokenizer.ggml.tokens": .array(["a", "b", "ab", "Ġ", "<|eot|>"].map { .string($0) }),
            "tokenizer.ggml.token_type": .array([1, 1, 1, 1, 3].map { .int32($0) }),
            "tokenizer.ggml.merges": .array([.string("a b")]),
            "tokenizer.ggml.eos_token_id": .uint32(4),
        ]
        edit(&metadata)
        return metadata
    }

    func testGGUFMetadata() throws {
        let tokenizer = try Tokenizer.load(ggufMetadata: metadata(), file: "tiny.gguf")
        XCTAssertEqual(tokenizer.encode("ab<|eot|>a"), [2, 4, 0])
        XCTAssertEqual(tokenizer.eosTokenID, 4)
        XCTAssertNil(tokenizer.bosTokenID)

        assertError(.unsupported, file: "tiny.gguf", item: "tokenizer.ggml.pre", mentioning: "qwen2") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.pre"] = .string("qwen2") }, file: "tiny.gguf")
        }
        assertError(.unsupported, file: "tiny.gguf", item: "tokenizer.ggml.model", mentioning: "llama") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.model"] = .string("llama") }, file: "tiny.gguf")
        }
        assertError(.missingKey, file: "tiny.gguf", item: "tokenizer.ggml.tokens") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.tokens"] = nil }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.merges[1]") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.merges"] = .array([.string("a b"), .string("ab")]) }, file: "tiny.gguf")
        }
        assertError(.unknownToken, file: "tiny.gguf", item: "tokenizer.ggml.merges[1]", mentioning: "\"x\"") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.merges"] = .array([.string("a b"), .string("x b")]) }, file: "tiny.gguf")
        }
        assertError(.unknownToken, file: "tiny.gguf", item: "eos token") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.eos_token_id"] = .uint32(99) }, file: "tiny.gguf")
        }
    }
}
