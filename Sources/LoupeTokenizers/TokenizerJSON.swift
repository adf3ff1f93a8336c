import Foundation
import LoupeFormats

extension Tokenizer {
    /// An HF `tokenizer.json` whose model is BPE: byte-level (behind a ByteLevel pre-tokenizer)
    /// or over characters, with or without byte fallback (SentencePiece-style). Settings that
    /// change the ids or the decoded text and that Loupe does not implement (a normalizer or
    /// split pattern it does not know, dropout, an EOS the post-processor appends ...) are
    /// rejected with a `TokenizerError` naming the key. BOS and EOS come from the post-processor
    /// and a `tokenizer_config.json` beside the file, if there is one.
    public static func load(tokenizerJSON path: String) throws -> Tokenizer {
        let json = try translatingFormatErrors { try JSONValue.parse(contentsOf: path) }
        let file = JSONFile(path: path)
        let model = try file.require(json["model"], "model")
        if let type = model["type"], type.stringValue != "BPE" {
            throw file.unsupported("model.type", "model type \(describe(type)); Loupe reads BPE models only")
        }
        try file.expect(model["dropout"], "model.dropout", toBe: [.null, .number(0)], "BPE dropout is random")
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            try file.expect(model[key], "model.\(key)", toBe: [.null, .string("")], "subword affixes are not implemented")
        }
        let normalizer = try json["normalizer"].map { try normalizerSteps($0, item: "normalizer", file: file) } ?? []

        let vocab = try file.require(model["vocab"], "model.vocab", "an object of token -> id", \.objectValue)
        let addedList = try file.optional(json["added_tokens"], "added_tokens", "an array", \.arrayValue) ?? []
        var vocabulary = try Vocabulary(expecting: vocab.count + addedList.count, file: path, item: "model.vocab")
        // In id order, so that of two entries at fault the error names the same one every time.
        for (token, id) in vocab.sorted(by: { ($0.value.doubleValue ?? 0, $0.key) < ($1.value.doubleValue ?? 0, $1.key) }) {
            let item = "model.vocab[\(quoted(token))]"
            try vocabulary.add(token, id: file.require(id, item, "an integer id", \.intValue), file: path, item: item)
        }
        let mergeList = try file.require(model["merges"], "model.merges", "an array", \.arrayValue)
        guard mergeList.count <= Tokenizer.maximumMerges else {
            throw file.bad("model.merges", "\(mergeList.count) merges is more than the \(Tokenizer.maximumMerges) a tokenizer may have")
        }
        let merges = try mergeList.enumerated().map { i, merge in
            // HF writes merges as "a b" (before tokenizers 0.20) or as ["a", "b"].
            let item = "model.merges[\(i)]"
            if let text = merge.stringValue { return try splitMerge(text, file: path, item: item) }
            guard let pair = merge.arrayValue?.compactMap(\.stringValue), pair.count == 2, merge.arrayValue?.count == 2,
                  !pair[0].isEmpty, !pair[1].isEmpty else {
                throw file.bad(item, "expected \"a b\" or [\"a\", \"b\"] (two tokens), found \(describe(merge))")
            }
            return (pair[0], pair[1])
        }

        var added: [(content: String, id: Int)] = [], normalizedAdded: [(content: String, id: Int)] = []
        for (i, entry) in addedList.enumerated() {
            let item = "added_tokens[\(i)]"
            let content = try file.require(entry["content"], "\(item).content", "a string", \.stringValue)
            guard !content.isEmpty else { throw file.bad("\(item).content", "an added token's content is empty") }
            let id = try file.require(entry["id"], "\(item).id", "an integer", \.intValue)
            for flag in ["lstrip", "rstrip", "single_word"] where entry[flag]?.boolValue == true {
                throw file.unsupported("\(item).\(flag)", "added token \(quoted(content)) sets \(flag), which Loupe does not implement")
            }
            try vocabulary.add(content, id: id, file: path, item: "\(item).id")
            // HF's default: special tokens are matched in the raw text, others after normalizing.
            let special = try file.optional(entry["special"], "\(item).special", "a boolean", \.boolValue) ?? false
            if try file.optional(entry["normalized"], "\(item).normalized", "a boolean", \.boolValue) ?? !special {
                // HF matches such a token as the normalizer spells it.
                let spelled = NormalizerStep.apply(normalizer, to: content)
                if !spelled.isEmpty { normalizedAdded.append((spelled, id)) }
            } else {
                added.append((content, id))
            }
        }

        var pre = PreTokenizerReading()
        if let json = json["pre_tokenizer"], !json.isNull {
            try preTokenizer(json, item: "pre_tokenizer", file: file, into: &pre)
        }
        let byteFallback = try file.optional(model["byte_fallback"], "model.byte_fallback", "a boolean", \.boolValue) ?? false
        if pre.byteLevel, byteFallback {
            throw file.unsupported("model.byte_fallback", "true is not supported with a ByteLevel pre-tokenizer: byte-level vocabularies spell every byte already")
        }

        var definition = TokenizerDefinition(
            file: path, vocabulary: vocabulary, merges: .spelled(merges), mergeItem: { "model.merges[\($0)]" }, rules: pre.rules)
        definition.alphabet = pre.byteLevel ? .byteLevel : .characters(byteFallback: byteFallback)
        definition.addedTokens = added
        definition.normalizedAddedTokens = normalizedAdded
        definition.normalizer = normalizer
        definition.metaspace = pre.metaspace
        definition.decoder = try decoderSteps(json["decoder"] ?? .null, item: "decoder", file: file)
        definition.ignoresMerges = try file.optional(model["ignore_merges"], "model.ignore_merges", "a boolean", \.boolValue) ?? false
        definition.unknownToken = try file.optional(model["unk_token"], "model.unk_token", "a token string", \.stringValue)
        definition.unknownItem = "model.unk_token"
        definition.fusesUnknown = try file.optional(model["fuse_unk"], "model.fuse_unk", "a boolean", \.boolValue) ?? false
        definition.vocabularyItem = "model.vocab"
        definition.mergesItem = "model.merges"
        if let processor = json["post_processor"], !processor.isNull,
           let bos = try leadingSpecialToken(processor, item: "post_processor", file: file, vocabulary: vocabulary) {
            definition.bos = bos.id
            definition.bosItem = bos.item
            definition.addsBOS = true
        }
        try applyTokenizerConfig(besides: path, to: &definition)
        return try Tokenizer(definition)
    }

    // MARK: - The parts of a tokenizer.json

    /// A normalizer as the steps it runs.
    private static func normalizerSteps(_ json: JSONValue, item: String, file: JSONFile) throws -> [NormalizerStep] {
        if json.isNull { return [] }
        let type = try file.require(json["type"], "\(item).type", "a string", \.stringValue)
        switch type {
        case "Sequence":
            let steps = try file.require(json["normalizers"], "\(item).normalizers", "an array", \.arrayValue)
            return try steps.enumerated().flatMap { i, step in try normalizerSteps(step, item: "\(item).normalizers[\(i)]", file: file) }
        case "NFC":
            return [.nfc]
        case "Replace":
            let (pattern, content) = try replacement(json, item: item, file: file)
            return [.replace(pattern, content)]
        case "Prepend":
            return [.prepend(try file.require(json["prepend"], "\(item).prepend", "a string", \.stringValue))]
        default:
            throw file.unsupported("\(item).type", "normalizer \(quoted(type)) is not one Loupe implements (NFC, Replace, Prepend, Sequence)")
        }
    }

    /// A Replace step's literal pattern and content (normalizer or decoder).
    private static func replacement(_ json: JSONValue, item: String, file: JSONFile) throws -> (String, String) {
        guard let pattern = json["pattern"]?["String"]?.stringValue else {
            let regex = json["pattern"]?["Regex"]?.stringValue.map { "Regex pattern \(quoted($0))" }
            throw file.unsupported("\(item).pattern", "\(regex ?? json["pattern"].map(describe) ?? "no pattern"): only String patterns are implemented")
        }
        guard !pattern.isEmpty else { throw file.unsupported("\(item).pattern", "an empty pattern is not supported") }
        return (pattern, try file.require(json["content"], "\(item).content", "a string", \.stringValue))
    }

    /// What a pre-tokenizer amounts to: split rules, whether it ends in ByteLevel, and Metaspace.
    private struct PreTokenizerReading {
        var rules: [SplitRule] = []
        var byteLevel = false
        var metaspace: Metaspace?
    }

    private static func preTokenizer(_ json: JSONValue, item: String, file: JSONFile, into pre: inout PreTokenizerReading) throws {
        let type = try file.require(json["type"], "\(item).type", "a string", \.stringValue)
        if pre.byteLevel {
            throw file.unsupported(item, "a \(type) step after ByteLevel would split byte-level text")
        }
        switch type {
        case "Sequence":
            let steps = try file.require(json["pretokenizers"], "\(item).pretokenizers", "an array", \.arrayValue)
            for (i, step) in steps.enumerated() {
                try preTokenizer(step, item: "\(item).pretokenizers[\(i)]", file: file, into: &pre)
            }
        case "ByteLevel":
            if json["add_prefix_space"]?.boolValue == true {
                throw file.unsupported("\(item).add_prefix_space", "add_prefix_space is not implemented")
            }
            if pre.metaspace != nil { throw file.unsupported(item, "ByteLevel after Metaspace is not supported") }
            if json["use_regex"]?.boolValue ?? true { pre.rules.append(.gpt2) }
            pre.byteLevel = true
        case "Metaspace":
            // Loupe rewrites the text once, before any split: Metaspace must come first.
            guard pre.rules.isEmpty, pre.metaspace == nil else {
                throw file.unsupported(item, "Metaspace after another pre-tokenizer step is not supported")
            }
            let replacement = try file.optional(json["replacement"], "\(item).replacement", "a string", \.stringValue) ?? "▁"
            guard replacement.unicodeScalars.count == 1, let scalar = replacement.unicodeScalars.first else {
                throw file.unsupported("\(item).replacement", "\(quoted(replacement)): one character is supported")
            }
            let prepend: Metaspace.Prepend
            if let scheme = try file.optional(json["prepend_scheme"], "\(item).prepend_scheme", "a string", \.stringValue) {
                guard let known = Metaspace.Prepend(rawValue: scheme) else {
                    throw file.unsupported("\(item).prepend_scheme", "\(quoted(scheme)) is not one Loupe implements (always, first, never)")
                }
                prepend = known
            } else {
                // Files from before prepend_scheme say add_prefix_space (HF's default: true).
                let adds = try file.optional(json["add_prefix_space"], "\(item).add_prefix_space", "a boolean", \.boolValue) ?? true
                prepend = adds ? .always : .never
            }
            pre.metaspace = Metaspace(replacement: scalar, prepend: prepend)
            if try file.optional(json["split"], "\(item).split", "a boolean", \.boolValue) ?? true {
                pre.rules.append(.literal([scalar], .mergedWithNext))
            }
        case "Split":
            guard json["invert"]?.boolValue != true else {
                throw file.unsupported("\(item).invert", "inverted splits are not implemented")
            }
            let behaviourText = try file.require(json["behavior"], "\(item).behavior", "a string", \.stringValue)
            if let literal = json["pattern"]?["String"]?.stringValue, !literal.isEmpty {
                guard let behaviour = SplitRule.Behaviour(rawValue: behaviourText) else {
                    throw file.unsupported("\(item).behavior", "\(quoted(behaviourText)) is not one Loupe implements (Isolated, MergedWithPrevious, MergedWithNext)")
                }
                pre.rules.append(.literal(Array(literal.unicodeScalars), behaviour))
                return
            }
            guard let pattern = json["pattern"]?["Regex"]?.stringValue else {
                throw file.unsupported("\(item).pattern", "only Regex and non-empty String split patterns are implemented")
            }
            guard let rule = SplitRule.recognising(pattern: pattern) else {
                throw file.unsupported("\(item).pattern", "split pattern \(quoted(pattern)) is not one Loupe implements (GPT-2's, Llama-3's, Qwen2's)")
            }
            guard behaviourText == "Isolated" else {
                throw file.unsupported("\(item).behavior", "\(quoted(behaviourText)): only Isolated regex splits are implemented")
            }
            pre.rules.append(rule)
        case "Digits":
            pre.rules.append(.digits(individual: json["individual_digits"]?.boolValue ?? false))
        default:
            throw file.unsupported("\(item).type", "pre-tokenizer \(quoted(type)) is not one Loupe implements (ByteLevel, Metaspace, Split, Digits, Sequence)")
        }
    }

    /// A decoder as the steps it runs.
    private static func decoderSteps(_ json: JSONValue, item: String, file: JSONFile) throws -> [DecoderStep] {
        let type = json["type"]?.stringValue
        switch type {
        case "Sequence":
            let steps = try file.require(json["decoders"], "\(item).decoders", "an array", \.arrayValue)
            return try steps.enumerated().flatMap { i, step in try decoderSteps(step, item: "\(item).decoders[\(i)]", file: file) }
        case "ByteLevel":
            return [.byteLevel]
        case "Replace":
            let (pattern, content) = try replacement(json, item: item, file: file)
            return [.replace(pattern, content)]
        case "ByteFallback":
            return [.byteFallback]
        case "Fuse":
            return [.fuse]
        case "Strip":
            let content = try file.require(json["content"], "\(item).content", "a character", \.stringValue)
            guard content.unicodeScalars.count == 1, let scalar = content.unicodeScalars.first else {
                throw file.bad("\(item).content", "expected one character, found \(quoted(content))")
            }
            let start = try file.require(json["start"], "\(item).start", "a count", \.intValue)
            let stop = try file.require(json["stop"], "\(item).stop", "a count", \.intValue)
            guard start >= 0, stop >= 0 else { throw file.bad(item, "start and stop are counts, found \(start) and \(stop)") }
            return [.strip(content: scalar, start: start, stop: stop)]
        case "Metaspace":
            let replacement = try file.optional(json["replacement"], "\(item).replacement", "a string", \.stringValue) ?? "▁"
            guard replacement.unicodeScalars.count == 1, let scalar = replacement.unicodeScalars.first else {
                throw file.unsupported("\(item).replacement", "\(quoted(replacement)): one character is supported")
            }
            let scheme = try file.optional(json["prepend_scheme"], "\(item).prepend_scheme", "a string", \.stringValue)
            let adds = try file.optional(json["add_prefix_space"], "\(item).add_prefix_space", "a boolean", \.boolValue) ?? true
            return [.metaspace(replacement: scalar, dropsInFirst: scheme.map { $0 != "never" } ?? adds)]
        default:
            throw file.unsupported(item, "decoder \(type.map(quoted) ?? "null") is not one Loupe implements (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)")
        }
    }

    /// The id of the special token the post-processor puts before the text, and the entry it
    /// comes from. A post-processor that adds anything else is refused: `encode` adds BOS only.
    private static func leadingSpecialToken(_ json: JSONValue, item: String, file: JSONFile,
                                            vocabulary: Vocabulary) throws -> (id: Int, item: String)? {
        let type = json["type"]?.stringValue
        switch type {
        case "Sequence":
            var found: (id: Int, item: String)?
            for (i, processor) in (json["processors"]?.arrayValue ?? []).enumerated() {
                guard let leading = try leadingSpecialToken(processor, item: "\(item).processors[\(i)]", file: file, vocabulary: vocabulary) else { continue }
                if found != nil { throw file.unsupported(leading.item, "a second post-processor that adds a special token") }
                found = leading
            }
            return found
        case "ByteLevel":
            return nil  // it only moves offsets
        case "TemplateProcessing":
            let single = try file.require(json["single"], "\(item).single", "an array", \.arrayValue)
            let sequences = single.indices.filter { single[$0]["Sequence"] != nil }
            guard sequences.count == 1, sequences[0] == single.count - 1, single.count <= 2 else {
                throw file.unsupported("\(item).single", "a template other than [$A] or [special token, $A]; Loupe adds a BOS token only")
            }
            guard single.count == 2 else { return nil }
            guard let name = single[0]["SpecialToken"]?["id"]?.stringValue else {
                throw file.bad("\(item).single[0]", "expected {\"SpecialToken\": {\"id\": ...}}")
            }
            let idsItem = "\(item).special_tokens[\(quoted(name))].ids"
            if let ids = json["special_tokens"]?[name]?["ids"], !ids.isNull {
                guard ids.arrayValue?.count == 1 else {
                    throw file.unsupported(idsItem, "a special token of \(ids.arrayValue?.count ?? 0) ids; Loupe adds a single BOS id")
                }
                let first = try file.require(ids.arrayValue?.first, "\(idsItem)[0]", "an integer id", \.intValue)
                return (first, "\(idsItem)[0]")
            }
            guard let id = vocabulary.id(name) else {
                throw TokenizerError(.unknownToken, file: file.path, item: "\(item).single[0]",
                                     "the special token \(quoted(name)) is not in the vocabulary")
            }
            return (id, "\(item).single[0]")
        default:
            throw file.unsupported("\(item).type", "post-processor \(type.map(quoted) ?? "null") is not one Loupe implements (TemplateProcessing, ByteLevel, Sequence)")
        }
    }
}

/// Error helpers for one JSON file.
struct JSONFile {
    let path: String

    func bad(_ item: String, _ message: String) -> TokenizerError {
        TokenizerError(.badValue, file: path, item: item, message)
    }

    func unsupported(_ item: String, _ message: String) -> TokenizerError {
        TokenizerError(.unsupported, file: path, item: item, message)
    }

    /// A key that must be present and not null.
    func require(_ value: JSONValue?, _ item: String) throws -> JSONValue {
        guard let value, !value.isNull else { throw TokenizerError(.missingKey, file: path, item: item, "missing") }
        return value
    }

    /// A key that must be present and hold what `convert` accepts, described as `expected`.
    func require<T>(_ value: JSONValue?, _ item: String, _ expected: String, _ convert: (JSONValue) -> T?) throws -> T {
        let value = try require(value, item)
        guard let converted = convert(value) else { throw bad(item, "expected \(expected), found \(describe(value))") }
        return converted
    }

    /// A key that may be absent or null, else must hold what `convert` accepts.
    func optional<T>(_ value: JSONValue?, _ item: String, _ expected: String, _ convert: (JSONValue) -> T?) throws -> T? {
        guard let value, !value.isNull else { return nil }
        guard let converted = convert(value) else { throw bad(item, "expected \(expected), found \(describe(value))") }
        return converted
    }

    /// A setting that must be absent or one of `allowed`.
    func expect(_ value: JSONValue?, _ item: String, toBe allowed: [JSONValue], _ why: String) throws {
        guard let value, !allowed.contains(value) else { return }
        throw unsupported(item, "\(describe(value)) is not supported: \(why)")
    }
}

func quoted(_ text: String) -> String { "\"\(text)\"" }

/// A JSON value in an error message: scalars as they are, containers by kind only.
func describe(_ value: JSONValue) -> String {
    switch value {
    case .null: "null"
    case .bool(let b): "\(b)"
    case .number(let n): "\(n)"
    case .string(let s): quoted(s)
    case .array(let a): "an array of \(a.count)"
    case .object: "an object"
    }
}
