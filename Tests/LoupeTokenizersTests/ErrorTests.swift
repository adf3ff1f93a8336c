import Foundation
@testable import LoupeFormats
@testable import LoupeTokenizers
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
        let lateMetaspace = try write(tokenizerJSON {
            $0["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
                ["type": "Digits", "individual_digits": true],
                ["type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false]]]
        })
        assertError(.unsupported, file: "tokenizer.json", item: "pre_tokenizer.pretokenizers[1]", mentioning: "Metaspace") {
            try Tokenizer.load(tokenizerJSON: lateMetaspace)
        }
        let byteFallback = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["byte_fallback"] = true
            json["model"] = model
        })
        assertError(.unsupported, file: "tokenizer.json", item: "model.byte_fallback", mentioning: "ByteLevel") {
            try Tokenizer.load(tokenizerJSON: byteFallback)
        }
        let eos = try write(tokenizerJSON {
            $0["post_processor"] = ["type": "TemplateProcessing",
                                    "single": [["Sequence": ["id": "A", "type_id": 0]], ["SpecialToken": ["id": "b", "type_id": 0]]]]
        })
        assertError(.unsupported, file: "tokenizer.json", item: "post_processor.single", mentioning: "BOS") {
            try Tokenizer.load(tokenizerJSON: eos)
        }
        let bert = try write(tokenizerJSON { $0["post_processor"] = ["type": "BertProcessing", "sep": ["b", 1], "cls": ["a", 0]] })
        assertError(.unsupported, file: "tokenizer.json", item: "post_processor.type", mentioning: "BertProcessing") {
            try Tokenizer.load(tokenizerJSON: bert)
        }
        let regexReplace = try write(tokenizerJSON { $0["normalizer"] = ["type": "Replace", "pattern": ["Regex": " +"], "content": " "] })
        assertError(.unsupported, file: "tokenizer.json", item: "normalizer.pattern", mentioning: " +") {
            try Tokenizer.load(tokenizerJSON: regexReplace)
        }
        let wordPieceDecoder = try write(tokenizerJSON { $0["decoder"] = ["type": "WordPiece", "prefix": "##", "cleanup": true] })
        assertError(.unsupported, file: "tokenizer.json", item: "decoder", mentioning: "WordPiece") {
            try Tokenizer.load(tokenizerJSON: wordPieceDecoder)
        }
        let normalizer = try write(tokenizerJSON { $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"], ["type": "NFKC"]]] })
        assertError(.unsupported, file: "tokenizer.json", item: "normalizer.normalizers[1].type", mentioning: "NFKC") {
            try Tokenizer.load(tokenizerJSON: normalizer)
        }
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

        assertError(.unsupported, file: "tiny.gguf", item: "tokenizer.ggml.pre", mentioning: "tekken") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.pre"] = .string("tekken") }, file: "tiny.gguf")
        }
        assertError(.unsupported, file: "tiny.gguf", item: "tokenizer.ggml.model", mentioning: "t5") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.model"] = .string("t5") }, file: "tiny.gguf")
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
        assertError(.unknownToken, file: "tiny.gguf", item: "tokenizer.ggml.eos_token_id", mentioning: "99") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.eos_token_id"] = .uint32(99) }, file: "tiny.gguf")
        }
    }

    /// SentencePiece GGUF metadata: settings Loupe does not implement are refused.
    func testSentencePieceGGUFMetadata() throws {
        let llama: (inout [String: GGUFValue]) -> Void = {
            $0["tokenizer.ggml.model"] = .string("llama")
            $0["tokenizer.ggml.tokens"] = .array(["<unk>", "<s>", "</s>", "▁", "a", "▁a"].map { .string($0) })
            $0["tokenizer.ggml.token_type"] = .array([3, 3, 3, 1, 1, 1].map { .int32($0) })
            $0["tokenizer.ggml.scores"] = .array([0, 0, 0, -1, -2, -3].map { .float32($0) })
            $0["tokenizer.ggml.merges"] = nil
            $0["tokenizer.ggml.bos_token_id"] = .uint32(1)
            $0["tokenizer.ggml.eos_token_id"] = .uint32(2)
        }
        let tokenizer = try Tokenizer.load(ggufMetadata: metadata(llama), file: "tiny.gguf")
        XCTAssertTrue(tokenizer.addsBOS, "a SentencePiece GGUF adds BOS unless it says not to")
        XCTAssertEqual(tokenizer.encode("a a"), [1, 5, 5])

        assertError(.unsupported, file: "tiny.gguf", item: "tokenizer.ggml.add_eos_token", mentioning: "BOS") {
            try Tokenizer.load(ggufMetadata: metadata { llama(&$0); $0["tokenizer.ggml.add_eos_token"] = .bool(true) }, file: "tiny.gguf")
        }
        assertError(.unsupported, file: "tiny.gguf", item: "general.architecture", mentioning: "phi3") {
            try Tokenizer.load(ggufMetadata: metadata { llama(&$0); $0["general.architecture"] = .string("phi3") }, file: "tiny.gguf")
        }
        assertError(.missingKey, file: "tiny.gguf", item: "tokenizer.ggml.scores") {
            try Tokenizer.load(ggufMetadata: metadata { llama(&$0); $0["tokenizer.ggml.scores"] = nil }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.scores[4]") {
            try Tokenizer.load(ggufMetadata: metadata {
                llama(&$0)
                $0["tokenizer.ggml.scores"] = .array([0, 0, 0, -1, .nan, -3].map { .float32($0) })
            }, file: "tiny.gguf")
        }
    }

    // MARK: Hostile files

    /// `tokenizerJSON()` with the model's vocabulary (and merges) replaced.
    private func withVocab(_ vocab: [String: Any], merges: [Any]? = nil) -> [String: Any] {
        tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["vocab"] = vocab
            if let merges { model["merges"] = merges }
            json["model"] = model
        }
    }

    /// A vocab.json + merges.txt pair in a fresh directory.
    private func vocabAndMerges(_ vocab: String, _ merges: String = "#version: 0.2\na b\n") throws -> (vocab: String, merges: String) {
        let directory = try Fixtures.temporaryDirectory(self)
        return (try write(vocab, name: "vocab.json", in: directory), try write(merges, name: "merges.txt", in: directory))
    }

    func testIdsOutOfRange() throws {
        let negative = try write(withVocab(["a": 0, "b": 1, "ab": -1, "Ġ": 3]))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"ab\"]", mentioning: "-1") {
            try Tokenizer.load(tokenizerJSON: negative)
        }
        // Four tokens may skip ids (65,536 at most), but not reach 2^31: a table of 2^31 entries.
        let huge = try write(withVocab(["a": 0, "b": 1, "ab": 2147483647, "Ġ": 3]))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"ab\"]", mentioning: "2147483647 of \"ab\" is out of range") {
            try Tokenizer.load(tokenizerJSON: huge)
        }
        let beyond = try write(withVocab(["a": 0, "b": 1, "ab": 4 + 65536, "Ġ": 3]))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"ab\"]", mentioning: "ids run below \(4 + 65536)") {
            try Tokenizer.load(tokenizerJSON: beyond)
        }
        // Skipping a few is allowed (HF loads such vocabularies, with a warning): the largest id counts.
        let holes = try Tokenizer.load(tokenizerJSON: write(withVocab(["a": 0, "b": 1, "ab": 9, "Ġ": 3], merges: [["a", "b"]])))
        XCTAssertEqual(holes.vocabularySize, 10)
        XCTAssertEqual(holes.encode("ab a"), [9, 3, 0])
        XCTAssertNil(holes.tokenString(5))
        let fraction = try write(withVocab(["a": 0, "b": 1.5]))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"b\"]", mentioning: "1.5") {
            try Tokenizer.load(tokenizerJSON: fraction)
        }
        let files = try vocabAndMerges(#"{"a": 0, "b": 1, "ab": -7}"#)
        assertError(.badValue, file: "vocab.json", item: "\"ab\"", mentioning: "-7") {
            try Tokenizer.load(vocabJSON: files.vocab, merges: files.merges)
        }
        let far = try vocabAndMerges(#"{"a": 0, "b": 1, "ab": 1e15}"#)
        assertError(.badValue, file: "vocab.json", item: "\"ab\"", mentioning: "out of range") {
            try Tokenizer.load(vocabJSON: far.vocab, merges: far.merges)
        }
    }

    func testDuplicateIdsAndTokens() throws {
        let sharedID = try write(withVocab(["a": 0, "b": 1, "ab": 1, "Ġ": 3]))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"b\"]", mentioning: "id 1 is given to both \"ab\" and \"b\"") {
            try Tokenizer.load(tokenizerJSON: sharedID)
        }
        // A token twice in one object: JSON readers disagree on which to keep, so it is refused.
        let directory = try Fixtures.temporaryDirectory(self)
        let text = #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "a": 3}, "merges": []}, "#
            + #""pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}}"#
        let twice = try write(text, name: "tokenizer.json", in: directory)
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab[\"a\"]", mentioning: "twice") {
            try Tokenizer.load(tokenizerJSON: twice)
        }
        let files = try vocabAndMerges(#"{"a": 0, "b": 1, "ab": 2, "b": 3}"#)
        assertError(.badValue, file: "vocab.json", item: "\"b\"", mentioning: "twice") {
            try Tokenizer.load(vocabJSON: files.vocab, merges: files.merges)
        }
        // An added token that is in the vocabulary under another id.
        let added = try write(tokenizerJSON { $0["added_tokens"] = [["id": 4, "content": "ab", "special": true]] })
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].id", mentioning: "\"ab\" is given both id 2 and id 4") {
            try Tokenizer.load(tokenizerJSON: added)
        }
        // The same token again under its own id is fine (files list their specials in both).
        let again = try write(tokenizerJSON { $0["added_tokens"] = [["id": 2, "content": "ab", "special": true]] })
        XCTAssertEqual(try Tokenizer.load(tokenizerJSON: again).encode("ab"), [2])
        // GGUF token lists may repeat a token (published files do): the last id encodes it, as in transformers.
        let repeated = try Tokenizer.load(ggufMetadata: metadata {
            $0["tokenizer.ggml.tokens"] = .array(["a", "b", "ab", "Ġ", "<|eot|>", "ab"].map { .string($0) })
            $0["tokenizer.ggml.token_type"] = .array([1, 1, 1, 1, 3, 1].map { .int32($0) })
        }, file: "tiny.gguf")
        XCTAssertEqual(repeated.encode("ab"), [5])
        XCTAssertEqual(repeated.decode([2, 5]), "abab")
    }

    func testMergesMustNameKnownTokens() throws {
        let result = try write(withVocab(["a": 0, "b": 1, "Ġ": 3], merges: [["a", "b"]]))
        assertError(.unknownToken, file: "tokenizer.json", item: "model.merges[0]", mentioning: "the merged token \"ab\"") {
            try Tokenizer.load(tokenizerJSON: result)
        }
        let empty = try write(withVocab(["a": 0, "b": 1, "ab": 2], merges: [["", "ab"]]))
        assertError(.badValue, file: "tokenizer.json", item: "model.merges[0]", mentioning: "two tokens") {
            try Tokenizer.load(tokenizerJSON: empty)
        }
        let three = try write(withVocab(["a": 0, "b": 1, "ab": 2], merges: [["a", "b", "c"]]))
        assertError(.badValue, file: "tokenizer.json", item: "model.merges[0]") { try Tokenizer.load(tokenizerJSON: three) }
        let files = try vocabAndMerges(#"{"a": 0, "b": 1}"#, "a b\n")
        assertError(.unknownToken, file: "merges.txt", item: "line 1", mentioning: "\"ab\"") {
            try Tokenizer.load(vocabJSON: files.vocab, merges: files.merges)
        }
        assertError(.unknownToken, file: "tiny.gguf", item: "tokenizer.ggml.merges[0]", mentioning: "the merged token \"ba\"") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.merges"] = .array([.string("b a")]) }, file: "tiny.gguf")
        }
    }

    func testAddedTokensWithBadIds() throws {
        func added(_ entry: [String: Any]) throws -> String { try write(tokenizerJSON { $0["added_tokens"] = [entry] }) }
        let negative = try added(["id": -1, "content": "<s>"])
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].id", mentioning: "id -1 of \"<s>\"") {
            try Tokenizer.load(tokenizerJSON: negative)
        }
        let beyond = try added(["id": 1 << 40, "content": "<s>"])
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].id", mentioning: "out of range") {
            try Tokenizer.load(tokenizerJSON: beyond)
        }
        let taken = try added(["id": 1, "content": "<s>"])
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].id", mentioning: "id 1 is given to both \"b\" and \"<s>\"") {
            try Tokenizer.load(tokenizerJSON: taken)
        }
        let text = try added(["id": "4", "content": "<s>"])
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].id", mentioning: "\"4\"") {
            try Tokenizer.load(tokenizerJSON: text)
        }
        let empty = try added(["id": 4, "content": ""])
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens[0].content", mentioning: "empty") {
            try Tokenizer.load(tokenizerJSON: empty)
        }
        let notAList = try write(tokenizerJSON { $0["added_tokens"] = ["id": 4, "content": "<s>"] })
        assertError(.badValue, file: "tokenizer.json", item: "added_tokens", mentioning: "an array") {
            try Tokenizer.load(tokenizerJSON: notAList)
        }
        // Added tokens count towards the ids the vocabulary can hold.
        let next = try Tokenizer.load(tokenizerJSON: added(["id": 4, "content": "<s>"]))
        XCTAssertEqual(next.encode("a<s>b"), [0, 4, 1])
    }

    func testSpecialTokenIds() throws {
        let template: (Any) -> [String: Any] = { ids in
            ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
             "special_tokens": ["<s>": ["id": "<s>", "ids": ids, "tokens": ["<s>"]]]]
        }
        let beyond = try write(tokenizerJSON { $0["post_processor"] = template([70000]) })
        assertError(.unknownToken, file: "tokenizer.json", item: "post_processor.special_tokens[\"<s>\"].ids[0]", mentioning: "70000") {
            try Tokenizer.load(tokenizerJSON: beyond)
        }
        let hole = try write(withVocab(["a": 0, "b": 1, "ab": 2, "Ġ": 5]) .merging(["post_processor": template([4])]) { $1 })
        assertError(.unknownToken, file: "tokenizer.json", item: "post_processor.special_tokens[\"<s>\"].ids[0]", mentioning: "skips") {
            try Tokenizer.load(tokenizerJSON: hole)
        }
        let notANumber = try write(tokenizerJSON { $0["post_processor"] = template(["x"]) })
        assertError(.badValue, file: "tokenizer.json", item: "post_processor.special_tokens[\"<s>\"].ids[0]", mentioning: "\"x\"") {
            try Tokenizer.load(tokenizerJSON: notANumber)
        }
        let inSequence = try write(tokenizerJSON {
            $0["post_processor"] = ["type": "Sequence", "processors": [["type": "ByteLevel"], template([-3])]]
        })
        assertError(.unknownToken, file: "tokenizer.json", item: "post_processor.processors[1].special_tokens[\"<s>\"].ids[0]", mentioning: "-3") {
            try Tokenizer.load(tokenizerJSON: inSequence)
        }
        let bos = try Tokenizer.load(tokenizerJSON: write(tokenizerJSON { $0["post_processor"] = template([3]) }))
        XCTAssertEqual(bos.encode("a"), [3, 0])

        assertError(.unknownToken, file: "tiny.gguf", item: "tokenizer.ggml.bos_token_id", mentioning: "-1") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.bos_token_id"] = .int32(-1) }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.bos_token_id", mentioning: "an integer") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.bos_token_id"] = .string("1") }, file: "tiny.gguf")
        }
        assertError(.missingKey, file: "tiny.gguf", item: "tokenizer.ggml.bos_token_id", mentioning: "names none") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.add_bos_token"] = .bool(true) }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.add_bos_token") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.add_bos_token"] = .uint8(1) }, file: "tiny.gguf")
        }
    }

    func testSettingsOfTheWrongKind() throws {
        let unknown = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["unk_token"] = 7
            json["model"] = model
        })
        assertError(.badValue, file: "tokenizer.json", item: "model.unk_token", mentioning: "7") { try Tokenizer.load(tokenizerJSON: unknown) }
        let ignore = try write(tokenizerJSON { json in
            var model = json["model"] as! [String: Any]
            model["ignore_merges"] = "yes"
            json["model"] = model
        })
        assertError(.badValue, file: "tokenizer.json", item: "model.ignore_merges") { try Tokenizer.load(tokenizerJSON: ignore) }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.token_type[2]", mentioning: "expected an integer") {
            try Tokenizer.load(ggufMetadata: metadata {
                $0["tokenizer.ggml.token_type"] = .array([.int32(1), .int32(1), .string("1"), .int32(1), .int32(3)])
            }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.token_type", mentioning: "an array of 2") {
            try Tokenizer.load(ggufMetadata: metadata { $0["tokenizer.ggml.token_type"] = .array([.int32(1), .int32(1)]) }, file: "tiny.gguf")
        }
        let directory = try Fixtures.temporaryDirectory(self)
        let json = try Fixtures.write(tokenizerJSON(), in: directory)
        _ = try write("[1, 2]", name: "tokenizer_config.json", in: directory)
        assertError(.badValue, file: "tokenizer_config.json", item: "top level") { try Tokenizer.load(tokenizerJSON: json) }
    }

    func testEmptyVocabulary() throws {
        let empty = try write(withVocab([:], merges: []))
        assertError(.badValue, file: "tokenizer.json", item: "model.vocab", mentioning: "no tokens") { try Tokenizer.load(tokenizerJSON: empty) }
        let files = try vocabAndMerges("{}", "")
        assertError(.badValue, file: "vocab.json", item: "top level", mentioning: "no tokens") {
            try Tokenizer.load(vocabJSON: files.vocab, merges: files.merges)
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.tokens", mentioning: "no tokens") {
            try Tokenizer.load(ggufMetadata: metadata {
                $0["tokenizer.ggml.tokens"] = .array([])
                $0["tokenizer.ggml.token_type"] = nil
                $0["tokenizer.ggml.merges"] = .array([])
                $0["tokenizer.ggml.eos_token_id"] = nil
            }, file: "tiny.gguf")
        }
    }

    func testAbsurdNesting() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        // A pre-tokenizer Sequence inside a Sequence, 100,000 deep: refused by the parser, no stack overflow.
        let deep = String(repeating: #"{"type": "Sequence", "pretokenizers": ["#, count: 100_000)
        let path = try write(#"{"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": "# + deep, name: "tokenizer.json", in: directory)
        XCTAssertEqual(JSONValue.maximumDepth, 128)
        assertError(.badValue, file: "tokenizer.json", item: nil, mentioning: "nesting deeper than 128") { try Tokenizer.load(tokenizerJSON: path) }
        let arrays = try write(String(repeating: "[", count: 1_000_000), name: "vocab.json", in: directory)
        let merges = try write("", name: "merges.txt", in: directory)
        assertError(.badValue, file: "vocab.json", item: nil, mentioning: "nesting deeper than 128") {
            try Tokenizer.load(vocabJSON: arrays, merges: merges)
        }
        // 128 deep is read.
        let limit = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        XCTAssertNoThrow(try JSONValue.parse(limit, file: "deep.json"))
        XCTAssertThrowsError(try JSONValue.parse("[" + limit + "]", file: "deep.json"))
    }

    func testAbsurdSizes() throws {
        // More values than any tokenizer file holds: refused while parsing, before the tree
        // grows (here with a bound of 1,000 instead of 2^24, to keep the test short).
        XCTAssertEqual(JSONValue.maximumValues, 1 << 24)
        let text = "[" + String(repeating: "0,", count: 999) + "0]"  // 1,001 values: the array and its numbers
        XCTAssertThrowsError(try Array(text.utf8).withUnsafeBytes { try JSONValue.parse($0, file: "vocab.json", maximumValues: 1000) }) { error in
            XCTAssert("\(error)".contains("more than 1000 values"), "\(error)")
        }
        XCTAssertNoThrow(try Array(text.utf8).withUnsafeBytes { try JSONValue.parse($0, file: "vocab.json", maximumValues: 1001) })
        // A GGUF vocabulary or merge list longer than any model's: refused before it is read.
        let count = (1 << 22) + 1
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.tokens", mentioning: "\(count) entries") {
            try Tokenizer.load(ggufMetadata: metadata {
                $0["tokenizer.ggml.tokens"] = .array([GGUFValue](repeating: .string("a"), count: count))
            }, file: "tiny.gguf")
        }
        assertError(.badValue, file: "tiny.gguf", item: "tokenizer.ggml.merges", mentioning: "\(count) entries") {
            try Tokenizer.load(ggufMetadata: metadata {
                $0["tokenizer.ggml.merges"] = .array([GGUFValue](repeating: .string("a b"), count: count))
            }, file: "tiny.gguf")
        }
        // As many tokens in vocab.json: the vocabulary refuses them before adding one.
        XCTAssertThrowsError(try Vocabulary(expecting: count, file: "vocab.json", item: "top level")) { error in
            XCTAssert("\(error)".contains("\(count) tokens is more than"), "\(error)")
        }
        XCTAssertThrowsError(try Vocabulary(list: [String](repeating: "a", count: count), file: "tiny.gguf", item: "tokens"))
    }

    /// Random damage to a small tokenizer.json (and a GGUF tokenizer's metadata): every outcome is
    /// a tokenizer or a TokenizerError, never a crash.
    func testDamagedFilesNeverCrash() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        let original = try [UInt8](JSONSerialization.data(withJSONObject: withVocab(
            ["a": 0, "b": 1, "ab": 2, "Ġ": 3, "<s>": 4, "Ġa": 5], merges: [["a", "b"], "Ġ a"]).merging(
            ["added_tokens": [["id": 4, "content": "<s>", "special": true]]]) { $1 }, options: .sortedKeys))
        var generator = SystemRandomNumberGenerator()
        var loaded = 0
        for round in 0..<400 {
            var bytes = original
            for _ in 0..<(1 + round % 3) {
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[at] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes.insert(bytes[Int.random(in: 0..<bytes.count, using: &generator)], at: at)
                default: bytes.remove(at: at)
                }
            }
            let path = directory + "/tokenizer.json"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let tokenizer = try Tokenizer.load(tokenizerJSON: path)
                let ids = tokenizer.encode("ab a<s>b 12")
                XCTAssert(ids.allSatisfy { $0 >= 0 && $0 < tokenizer.vocabularySize })
                _ = tokenizer.decode(ids + [-1, 1 << 40])
                loaded += 1
            } catch let error as TokenizerError {
                XCTAssert(error.file.hasSuffix("tokenizer.json"), "\(error)")
            }
        }
        XCTAssertGreaterThan(loaded, 0)
    }
}
