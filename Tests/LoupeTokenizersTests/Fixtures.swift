import Foundation
import LoupeTokenizers
import XCTest

/// The golden files scripts/make_tokenizer_fixtures.py writes, and the model files
/// scripts/fetch-models.sh fetches. A missing file is a test failure that says how to get it.
enum Fixtures {
    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tokenizers").path

    static var modelsDirectory: String {
        ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? NSHomeDirectory() + "/.cache/loupe/models"
    }

    /// A file under the models directory; throws (failing the test) when it is absent.
    static func model(_ name: String) throws -> String {
        let path = modelsDirectory + "/" + name
        guard FileManager.default.fileExists(atPath: path) else {
            throw Missing(description: "\(path) is missing: run scripts/fetch-models.sh (set LOUPE_MODELS to use another directory)")
        }
        return path
    }

    static var gpt2EncoderJSON: String { get throws { try model("gpt2-tokenizer/encoder.json") } }
    static var gpt2VocabBPE: String { get throws { try model("gpt2-tokenizer/vocab.bpe") } }
    static var smolGGUF: String { get throws { try model("SmolLM2-135M-Instruct.Q4_1.gguf") } }
    static var gemmaGGUF: String { get throws { try model("gemma-3-270m-q4_k_m.gguf") } }

    /// A small tokenizer trained by the script, committed whole in its own directory.
    static func trained(_ name: String) -> String { directory + "/" + name }

    struct Corpus: Decodable {
        let seed: Int
        let strings: [String]
    }

    struct DecodeCase: Decodable {
        let ids: [Int]
        let text: String
    }

    /// One reference tokenizer's golden file.
    struct Golden {
        let ids: [[Int]]
        /// Where HF's pre-tokenizer ends each piece, in scalars (nil: the string has an added token).
        let pieces: [[Int]?]
        let decode: [DecodeCase]
        /// HF's decoding of each string's ids (less a leading BOS), by corpus index, where it
        /// is not the string itself.
        let decoded: [String: String]
        /// The tokenizer.json HF writes for the reference, vocabulary and merges left empty
        /// (for references whose vocabulary is not committed).
        let tokenizerJSON: [String: Any]?
    }

    static func corpus() throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/corpus.json"))
        return try JSONDecoder().decode(Corpus.self, from: data).strings
    }

    static func golden(_ name: String) throws -> Golden {
        let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/\(name).json"))
        struct Decoded: Decodable {
            let ids: [[Int]]
            let pieces: [[Int]?]
            let decode: [DecodeCase]?
            let decoded: [String: String]
        }
        let golden = try JSONDecoder().decode(Decoded.self, from: data)
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        return Golden(ids: golden.ids, pieces: golden.pieces, decode: golden.decode ?? [], decoded: golden.decoded,
                      tokenizerJSON: object?["tokenizer_json"] as? [String: Any])
    }

    /// A fresh temporary directory, removed when the test ends.
    static func temporaryDirectory(_ test: XCTestCase) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    /// Writes `skeleton` with `vocab` and `merges` filled in, as HF would have written it.
    static func writeTokenizerJSON(_ skeleton: [String: Any]?, vocab: [String: Int], merges: [[String]], to path: String) throws {
        guard var json = skeleton else { throw Missing(description: "the golden file has no tokenizer_json") }
        var model = json["model"] as? [String: Any] ?? [:]
        model["vocab"] = vocab
        model["merges"] = merges
        json["model"] = model
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    }

    /// A small tokenizer.json as HF writes one, with `edit` applied.
    static func smallTokenizerJSON(vocab: [String: Int], merges: [[String]],
                                   _ edit: (inout [String: Any]) -> Void = { _ in }) -> [String: Any] {
        var json: [String: Any] = [
            "version": "1.0", "added_tokens": [], "normalizer": NSNull(),
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true],
            "post_processor": NSNull(),
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges],
        ]
        edit(&json)
        return json
    }

    /// Writes `json` as `directory`/tokenizer.json and returns the path.
    static func write(_ json: [String: Any], in directory: String) throws -> String {
        let path = directory + "/tokenizer.json"
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// OpenAI's GPT-2 vocabulary and merges, read as plain data for writing other formats.
    static func gpt2VocabularyAndMerges() throws -> (vocab: [String: Int], merges: [[String]]) {
        let vocab = try JSONDecoder().decode([String: Int].self, from: Data(contentsOf: URL(fileURLWithPath: gpt2EncoderJSON)))
        let text = try String(contentsOfFile: gpt2VocabBPE, encoding: .utf8)
        let merges = text.split(separator: "\n").dropFirst().map { $0.split(separator: " ").map(String.init) }
        return (vocab, merges)
    }
}

/// Escapes a string so control characters and invisible ones show in failure messages.
func visible(_ text: String, limit: Int = 80) -> String {
    let escaped = text.unicodeScalars.prefix(limit).map { $0.escaped(asASCII: true) }.joined()
    return "\"\(escaped)\"" + (text.unicodeScalars.count > limit ? "..." : "")
}

/// Byte equality: Swift's `==` on String is canonical equivalence, which would call "é" and
/// "e\u{301}" equal.
func sameText(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }
