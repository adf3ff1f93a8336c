import Foundation
import LoupeFormats

/// A fixture directory as the conformance suite reads it:
///
/// - `config.json` and the weights: the checkpoint (loaded by the caller);
/// - `cases.json`: `sequences`, the token-id lists run alone and as one padded batch, and
///   optionally `expected`, the path (relative to the directory) of the reference file when
///   the fixture shares another's (a checkpoint of the same weights under other names);
/// - `expected.safetensors` (or the file `expected` names): HF transformers' outputs,
///   float32, each sequence run alone: `logits.{i}` [T, V], `resid_pre.0.{i}`,
///   `resid_post.{L}.{i}`, `attn_out.{L}.{i}`, `mlp_out.{L}.{i}` [T, D], `z.{L}.{i}`
///   [T, H·d_head], `pattern.{L}.{i}` [H, T, T], `final_norm.{i}` [T, D] (lm_head's input),
///   and `batched.logits` [sequences, longest, V], the sequences as one left-padded batch
///   (scripts/make_model_fixtures.py writes them);
/// - `conformance.json`: what the fixture declares about itself. `not_applicable` maps a
///   check to why it does not apply; only `tokenizer` (a checkpoint that ships no
///   tokenizer; the suite checks it indeed has none) and `hf-parity` (a fixture whose
///   reference is not HF's) may be declared so. `tokenizer_strings` adds strings to the
///   round trip. A fixture without a tokenizer and without this file fails the tokenizer
///   check: the absence is declared, never assumed.
///
///     {"not_applicable": {"tokenizer": "seeded-random weights over 512 ids; no tokenizer files"}}
public struct ConformanceFixture: Sendable {
    public let directory: String
    /// The sequences of `cases.json`.
    public let sequences: [[Int]]
    /// The reference file's path; nil when the fixture has none (`problems` says so unless
    /// `hf-parity` is declared not applicable).
    public let expected: String?
    /// `expected` as cases.json names it, when it does.
    let expectedName: String?
    /// Checks declared not to apply, and why.
    public let notApplicable: [String: String]
    /// Strings for the tokenizer round trip besides the suite's own.
    public let tokenizerStrings: [String]
    /// What is wrong with the fixture itself (reported by the `fixture` check).
    public let problems: [String]

    /// The checks a fixture may declare not applicable.
    public static let declarable: Set<String> = ["tokenizer", "hf-parity"]

    public init(directory: String) throws {
        self.directory = directory
        var problems = [String]()
        let casesPath = directory + "/cases.json"
        guard let cases = try Self.json(casesPath) else {
            throw ConformanceFailure(check: "fixture", message: "\(casesPath) is missing: the fixture's inputs are its cases.json")
        }
        guard let sequences = cases["sequences"] as? [[Int]], !sequences.isEmpty, sequences.allSatisfy({ !$0.isEmpty }) else {
            throw ConformanceFailure(check: "fixture", message: "\(casesPath): sequences must be a non-empty list of non-empty token-id lists")
        }
        self.sequences = sequences
        let declarations = try Self.json(directory + "/conformance.json") ?? [:]
        var notApplicable = [String: String]()
        for (check, reason) in declarations["not_applicable"] as? [String: Any] ?? [:] {
            guard Self.declarable.contains(check) else {
                problems.append("conformance.json declares \(check) not applicable; only \(Self.declarable.sorted().joined(separator: " and ")) may be")
                continue
            }
            guard let reason = reason as? String, !reason.isEmpty else {
                problems.append("conformance.json: not_applicable.\(check) must say why, as a string")
                continue
            }
            notApplicable[check] = reason
        }
        self.notApplicable = notApplicable
        tokenizerStrings = declarations["tokenizer_strings"] as? [String] ?? []
        expectedName = cases["expected"] as? String
        let named = expectedName.map { directory + "/" + $0 }
        let candidate = named ?? directory + "/expected.safetensors"
        if FileManager.default.fileExists(atPath: candidate) {
            expected = candidate
        } else {
            expected = nil
            if notApplicable["hf-parity"] == nil {
                problems.append("\(candidate) is missing: HF's reference outputs (or conformance.json declaring hf-parity not applicable)")
            }
        }
        self.problems = problems
    }

    /// What the fixture holds, for the report.
    var summary: [String] {
        var lines = ["\(sequences.count) sequences of \(sequences.map { String($0.count) }.joined(separator: ", ")) tokens"]
        if expected != nil { lines.append("reference: " + (expectedName.map { "\($0) (named by cases.json)" } ?? "expected.safetensors")) }
        return lines
    }

    /// The subdirectories of `root` that hold a checkpoint (a config.json), sorted by name.
    public static func directories(under root: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.sorted().map { root + "/" + $0 }.filter { FileManager.default.fileExists(atPath: $0 + "/config.json") }
    }

    /// True when `directory` holds an HF reference: an expected.safetensors, or a cases.json
    /// naming another fixture's.
    public static func hasReference(_ directory: String) -> Bool {
        if FileManager.default.fileExists(atPath: directory + "/expected.safetensors") { return true }
        guard let cases = try? json(directory + "/cases.json"), let named = cases["expected"] as? String else { return false }
        return FileManager.default.fileExists(atPath: directory + "/" + named)
    }

    /// The checkpoint's `model_type` (config.json), which picks its architecture.
    public static func modelType(_ directory: String) -> String? {
        (try? HFConfig(path: directory + "/config.json"))?.string("model_type")
    }

    /// A JSON object file; nil when the file does not exist.
    static func json(_ path: String) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))
        guard let map = object as? [String: Any] else {
            throw ConformanceFailure(check: "fixture", message: "\(path) must hold a JSON object")
        }
        return map
    }
}
