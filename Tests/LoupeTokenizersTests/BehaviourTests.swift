import Foundation
import LoupeTokenizers
import XCTest

/// Settings the real vocabularies do not exercise, on a six-token vocabulary. The expected ids
/// are what HF `tokenizers` 0.23 gives for the same tokenizer.json.
final class BehaviourTests: XCTestCase {
    /// "a" "b" "c", merges b+c then a+b, and "abc", which no merge sequence reaches from "a b c".
    private let vocab = ["a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "Ġ": 6]
    private let merges = [["b", "c"], ["a", "b"]]

    private func load(_ edit: (inout [String: Any]) -> Void) throws -> Tokenizer {
        let json = Fixtures.smallTokenizerJSON(vocab: vocab, merges: merges, edit)
        return try Tokenizer.load(tokenizerJSON: Fixtures.write(json, in: Fixtures.temporaryDirectory(self)))
    }

    private func model(_ settings: [String: Any]) -> (inout [String: Any]) -> Void {
        { json in
            var model = json["model"] as! [String: Any]
            model.merge(settings) { $1 }
            json["model"] = model
        }
    }

    func testMergesApplyInRankOrder() throws {
        let tokenizer = try load { _ in }
        XCTAssertEqual(tokenizer.encode("abc abcabc"), [0, 4, 6, 0, 4, 0, 4])
        // Bytes with no token are dropped, and their neighbours then merge.
        XCTAssertEqual(tokenizer.encode("axxb"), [3])
    }

    func testIgnoreMergesTakesWholeTokens() throws {
        let tokenizer = try load(model(["ignore_merges": true]))
        XCTAssertEqual(tokenizer.encode("abc abcabc"), [5, 6, 0, 4, 0, 4])
    }

    func testUnknownToken() throws {
        var vocab = vocab
        vocab["<unk>"] = 7
        for (fuse, expected) in [(false, [0, 7, 7, 1, 6, 7, 7]), (true, [0, 7, 1, 6, 7])] {
            let json = Fixtures.smallTokenizerJSON(vocab: vocab, merges: merges, model(["unk_token": "<unk>", "fuse_unk": fuse]))
            let tokenizer = try Tokenizer.load(tokenizerJSON: Fixtures.write(json, in: Fixtures.temporaryDirectory(self)))
            XCTAssertEqual(tokenizer.encode("axxb yy"), expected, "fuse_unk \(fuse)")
            XCTAssertEqual(tokenizer.decode(expected), fuse ? "a<unk>b <unk>" : "a<unk><unk>b <unk><unk>")
        }
    }

    func testAddedTokensMatchLeftmostLongest() throws {
        let tokenizer = try load { json in
            json["added_tokens"] = [
                ["id": 7, "content": "<a>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true],
                ["id": 8, "content": "<a><b>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true],
            ]
        }
        XCTAssertEqual(tokenizer.vocabularySize, 9)
        XCTAssertEqual(tokenizer.encode("x<a><b>a<a>b<a><"), [8, 0, 7, 1, 7])
        XCTAssertEqual(tokenizer.preTokenize("x<a><b>a<a>b"), ["x", "<a><b>", "a", "<a>", "b"])
        XCTAssertEqual(tokenizer.id(forToken: "<a><b>"), 8)
        XCTAssertEqual(tokenizer.tokenString(8), "<a><b>")
    }

    /// HF's Digits pre-tokenizer, both ways, before ByteLevel (pieces as HF gives them).
    func testDigitsPreTokenizer() throws {
        for (individual, expected) in [
            (false, ["ab", "12", " ", "3", "x", "٣٤½", " ", "99"]),
            (true, ["ab", "1", "2", " ", "3", "x", "٣", "٤", "½", " ", "9", "9"]),
        ] {
            let tokenizer = try load { json in
                json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
                    ["type": "Digits", "individual_digits": individual],
                    ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]]]
            }
            XCTAssertEqual(tokenizer.preTokenize("ab12 3x٣٤½ 99"), expected, "individual_digits \(individual)")
        }
    }

    /// A TemplateProcessing post-processor that puts a special token first makes it the BOS.
    func testTemplateBOS() throws {
        let tokenizer = try load { json in
            json["added_tokens"] = [["id": 7, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                                     "normalized": false, "special": true]]
            json["post_processor"] = ["type": "Sequence", "processors": [
                ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true],
                ["type": "TemplateProcessing",
                 "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                 "pair": [["Sequence": ["id": "A", "type_id": 0]], ["Sequence": ["id": "B", "type_id": 1]]],
                 "special_tokens": ["<s>": ["id": "<s>", "ids": [7], "tokens": ["<s>"]]]],
            ]]
        }
        XCTAssertTrue(tokenizer.addsBOS)
        XCTAssertEqual(tokenizer.bosTokenID, 7)
        XCTAssertEqual(tokenizer.encode("ab"), [7, 3])
        // Without special tokens (HF's add_special_tokens=False): no BOS, but one written in the text stays.
        XCTAssertEqual(tokenizer.encodeWithoutSpecialTokens("ab"), [3])
        XCTAssertEqual(tokenizer.encodeWithoutSpecialTokens("<s>ab"), [7, 3])
        XCTAssertEqual(tokenizer.encodeWithoutSpecialTokens(""), [])
    }

    /// BOS and EOS named in a tokenizer_config.json beside the file.
    func testTokenizerConfigNamesBOSAndEOS() throws {
        let directory = try Fixtures.temporaryDirectory(self)
        var vocab = vocab
        vocab["<s>"] = 7
        vocab["</s>"] = 8
        let path = try Fixtures.write(Fixtures.smallTokenizerJSON(vocab: vocab, merges: merges), in: directory)
        try #"{"bos_token": "<s>", "eos_token": {"content": "</s>", "special": true}}"#
            .write(toFile: directory + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        let tokenizer = try Tokenizer.load(tokenizerJSON: path)
        XCTAssertEqual(tokenizer.bosTokenID, 7)
        XCTAssertEqual(tokenizer.eosTokenID, 8)
        XCTAssertFalse(tokenizer.addsBOS)
        XCTAssertEqual(tokenizer.encodeWithoutSpecialTokens("ab"), tokenizer.encode("ab"), "a BOS the tokenizer does not add is not dropped")
    }

    /// Decoding cut inside a character: one U+FFFD per maximal invalid subsequence.
    func testDecodeReplacesInvalidUTF8() throws {
        let tokenizer = try Tokenizer.load(encoderJSON: Fixtures.gpt2EncoderJSON, vocabBPE: Fixtures.gpt2VocabBPE)
        let ids = tokenizer.encode("😀")  // four bytes, several tokens
        XCTAssertGreaterThan(ids.count, 1)
        XCTAssertEqual(tokenizer.decode(Array(ids.dropLast())), "\u{FFFD}")
        XCTAssertEqual(tokenizer.decode(ids + [99_999_999, -1]), "😀", "ids outside the vocabulary are skipped")
    }

    // MARK: SentencePiece-style BPE

    /// A character-level vocabulary with byte fallback behind Metaspace, as HF builds Llama's.
    private func sentencePiece(prepend: String, decoder: [String: Any]? = nil) throws -> Tokenizer {
        let added: (String, Int, Bool) -> [String: Any] = { content, id, special in
            ["id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special]
        }
        let json: [String: Any] = [
            "version": "1.0", "normalizer": NSNull(), "post_processor": NSNull(),
            "added_tokens": [added("<s>", 1, true), added("x", 8, false)],
            "pre_tokenizer": ["type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": false],
            "decoder": decoder ?? ["type": "Sequence", "decoders": [
                ["type": "Replace", "pattern": ["String": "▁"], "content": " "], ["type": "ByteFallback"], ["type": "Fuse"],
                ["type": "Strip", "content": " ", "start": 1, "stop": 0]]],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                      "vocab": ["<unk>": 0, "<s>": 1, "▁": 2, "h": 3, "i": 4, "▁h": 5, "▁hi": 6, "hi": 7, "x": 8, "<0x41>": 9],
                      "merges": [["▁", "h"], ["▁h", "i"], ["h", "i"]]],
        ]
        return try Tokenizer.load(tokenizerJSON: Fixtures.write(json, in: Fixtures.temporaryDirectory(self)))
    }

    /// Metaspace's prepend schemes around added tokens; byte fallback, and HF's unknown token
    /// held back until a character the vocabulary has (or the end).
    func testMetaspaceAndByteFallback() throws {
        let first = try sentencePiece(prepend: "first")
        XCTAssertEqual(first.encode("hi hi"), [6, 6])
        XCTAssertEqual(first.encode("<s>hi hi"), [1, 7, 6])
        XCTAssertEqual(first.encode("hi<s>hi"), [6, 1, 7])
        XCTAssertEqual(first.encode("hxh"), [5, 8, 3])
        XCTAssertEqual(first.encode("A"), [2, 9])
        XCTAssertEqual(first.encode("héA"), [5, 9, 0], "é has no byte tokens: <unk>, after A's byte token")
        XCTAssertEqual(first.encode(""), [])
        XCTAssertEqual(first.preTokenize("hi hi<s>"), ["▁hi▁hi", "<s>"])
        let always = try sentencePiece(prepend: "always")
        XCTAssertEqual(always.encode("<s>hi hi"), [1, 6, 6])
        XCTAssertEqual(always.encode("hi<s>hi"), [6, 1, 6])
        XCTAssertEqual(try sentencePiece(prepend: "never").encode("hi hi"), [7, 6])
    }

    /// HF's decoders, added tokens going through them too.
    func testSentencePieceDecoders() throws {
        let tokenizer = try sentencePiece(prepend: "first")
        XCTAssertEqual(tokenizer.decode([1, 6]), "<s> hi")
        XCTAssertEqual(tokenizer.decode([6, 1, 6]), "hi<s> hi")
        XCTAssertEqual(tokenizer.decode([9, 9]), "AA")
        XCTAssertEqual(tokenizer.decode([2, 2]), " ")
        XCTAssertEqual(tokenizer.decode([0]), "<unk>")
        let metaspace = try sentencePiece(prepend: "first", decoder: ["type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false])
        XCTAssertEqual(metaspace.decode([6, 6]), "hi hi")
        XCTAssertEqual(metaspace.decode([1, 6, 6]), "<s> hi hi")
        XCTAssertEqual(metaspace.decode([2, 2, 6]), "  hi")
    }
}
