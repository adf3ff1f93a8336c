import Foundation
import LoupeFormats

extension Tokenizer {
    /// An HF `tokenizer.json` whose model is BPE behind a ByteLevel pre-tokenizer. Settings that
    /// change the ids and that Loupe does not implement (a normalizer, an unknown split pattern,
    /// dropout ...) are rejected with a `TokenizerError` naming the key. BOS and EOS come from
    /// the post-processor and a `tokenizer_config.json` beside the file, if there is one.
    public static func load(tokenizerJSON path: String) throws -> Tokenizer {
        let json = try translatingFormatErrors { try JSONValue.parse(contentsOf: path) }
        let file = JSONFile(path: path)
        let model = try file.require(json["model"], "model")
        if let type = model["type"], type.stringValue != "BPE" {
            throw file.unsupported("model.type", "model type \(describe(type)); Loupe reads BPE models only")
        }
        try file.expect(model["dropout"], "model.dropout", toBe: [.null, .number(0)], "BPE dropout is random")
        try file.expect(model["byte_fallback"], "model.byte_fallback", toBe: [.null, .bool(false)], "byte fallback is for non-byte-level vocabularies")
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            try file.expect(model[key], "model.\(key)", toBe: [.null, .string("")], "subword affixes are not byte-level BPE")
        }
        try file.expect(json["normalizer"], "normalizer", toBe: [.null], "normalizers are not implemented")

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

        var added: [(content: String, id: Int)] = []
        for (i, entry) in addedList.enumerated() {
            let item = "added_tokens[\(i)]"
            let content = try file.require(entry["content"], "\(item).content", "a string", \.stringValue)
            guard !content.isEmpty else { throw file.bad("\(item).content", "an added token's content is empty") }
            let id = try file.require(entry["id"], "\(item).id", "an integer", \.intValue)
            for flag in ["lstrip", "rstrip", "single_word"] where entry[flag]?.boolValue == true {
                throw file.unsupported("\(item).\(flag)", "added token \(quoted(content)) sets \(flag), which Loupe does not implement")
            }
            try vocabulary.add(content, id: id, file: path, item: "\(item).id")
            added.append((content, id))
        }

        var rules: [SplitRule] = []
        var byteLevel = false
        if let pre = json["pre_tokenizer"], !pre.isNull {
            try preTokenizer(pre, item: "pre_tokenizer", file: file, rules: &rules, byteLevel: &byteLevel)
        }
        guard byteLevel else {
            throw file.unsupported("pre_tokenizer", "no ByteLevel step; Loupe reads byte-level BPE only")
        }
        try decoder(json["decoder"] ?? .null, item: "decoder", file: file)

        var definition = TokenizerDefinition(
            file: path, vocabulary: vocabulary, merges: merges, mergeItem: { "model.merges[\($0)]" }, rules: rules,
            addedTokens: added,
            ignoresMerges: try file.optional(model["ignore_merges"], "model.ignore_merges", "a boolean", \.boolValue) ?? false,
            unknownToken: try file.optional(model["unk_token"], "model.unk_token", "a token string", \.stringValue),
            fusesUnknown: try file.optional(model["fuse_unk"], "model.fuse_unk", "a boolean", \.boolValue) ?? false)
        definition.vocabularyItem = "model.vocab"
        definition.mergesItem = "model.merges"
        if let processor = json["post_processor"],
           let bos = try leadingSpecialToken(processor, item: "post_processor", file: file, vocabulary: vocabulary) {
            definition.bos = bos.id
            definition.bosItem = bos.item
            definition.addsBOS = true
        }
        try applyTokenizerConfig(besides: path, to: &definition)
        return try Tokenizer(definition)
    }

    /// An HF GPT-2 style directory's `vocab.json` and `merges.txt`.
    public static func load(vocabJSON: String, merges: String) throws -> Tokenizer {
        try loadVocabularyAndMerges(vocabJSON, merges)
    }

    /// OpenAI's GPT-2 files, `encoder.json` and `vocab.bpe` (the same formats under older names).
    public static func load(encoderJSON: String, vocabBPE: String) throws -> Tokenizer {
        try loadVocabularyAndMerges(encoderJSON, vocabBPE)
    }

    /// The tokenizer a GGUF file's metadata describes (`tokenizer.ggml.model = gpt2`). `file`
    /// names the file in errors. `tokenizer.ggml.pre` picks the split rules:
    /// - "gpt2", "default" and no key: GPT-2's pattern, as transformers' GGUF loader does
    ///   (llama.cpp runs extra regexes for "default"; files that say it are old conversions);
    /// - "smollm": digits one by one, then GPT-2's pattern, as SmolLM2's own tokenizer.json
    ///   and llama.cpp do (transformers' GGUF loader leaves the digit step out, and so differs
    ///   from the trained tokenizer on text with digits);
    /// - "llama-bpe", "llama3", "llama-v3": Llama-3's pattern.
    /// Others are rejected rather than guessed.
    public static func load(ggufMetadata metadata: [String: GGUFValue], file: String) throws -> Tokenizer {
        func fail(_ kind: TokenizerError.Kind, _ key: String, _ message: String) -> TokenizerError {
            TokenizerError(kind, file: file, item: key, message)
        }
        func strings(_ key: String) throws -> [String] {
            guard let values = metadata[key]?.arrayValue else { throw fail(.missingKey, key, "missing, or not an array") }
            // Counted before anything is made of them: the limits are the same for tokens and merges.
            guard values.count <= Vocabulary.maximumCount else {
                throw fail(.badValue, key, "\(values.count) entries is more than the \(Vocabulary.maximumCount) a tokenizer may have")
            }
            return try values.enumerated().map { i, value in
                guard let text = value.stringValue else { throw fail(.badValue, "\(key)[\(i)]", "expected a string, found \(value)") }
                return text
            }
        }

        let modelKey = "tokenizer.ggml.model"
        guard let model = metadata[modelKey]?.stringValue else { throw fail(.missingKey, modelKey, "missing") }
        guard model == "gpt2" else {
            throw fail(.unsupported, modelKey, "tokenizer model \"\(model)\"; Loupe reads byte-level BPE (\"gpt2\") only")
        }
        let preKey = "tokenizer.ggml.pre"
        let pre = metadata[preKey]?.stringValue ?? "default"
        let rules: [SplitRule]
        switch pre {
        case "gpt2", "default": rules = [.gpt2]
        case "smollm": rules = [.digits(individual: true), .gpt2]
        case "llama-bpe", "llama3", "llama-v3": rules = [.llama3]
        default: throw fail(.unsupported, preKey, "pre-tokenizer \"\(pre)\" is not one Loupe implements (gpt2, default, smollm, llama-bpe)")
        }

        let tokensKey = "tokenizer.ggml.tokens"
        let tokens = try strings(tokensKey)
        let mergesKey = "tokenizer.ggml.merges"
        let mergeTexts = try strings(mergesKey)
        guard mergeTexts.count <= Tokenizer.maximumMerges else {
            throw fail(.badValue, mergesKey, "\(mergeTexts.count) merges is more than the \(Tokenizer.maximumMerges) a tokenizer may have")
        }
        let merges = try mergeTexts.enumerated().map { i, text in
            try splitMerge(text, file: file, item: "\(mergesKey)[\(i)]")
        }
        var definition = TokenizerDefinition(
            file: file, vocabulary: try Vocabulary(list: tokens, file: file, item: tokensKey), merges: merges,
            mergeItem: { "\(mergesKey)[\($0)]" }, rules: rules)
        definition.vocabularyItem = tokensKey
        definition.mergesItem = mergesKey

        let typesKey = "tokenizer.ggml.token_type"
        if let types = metadata[typesKey] {
            guard let values = types.arrayValue, values.count == tokens.count else {
                throw fail(.badValue, typesKey, "expected an array of \(tokens.count) integers, one per token, found \(types.arrayValue.map { "an array of \($0.count)" } ?? "\(types)")")
            }
            let kinds = try values.enumerated().map { i, value in
                guard let kind = value.intValue else { throw fail(.badValue, "\(typesKey)[\(i)]", "expected an integer, found \(value)") }
                return kind
            }
            // Control (3) and user-defined (4) tokens are matched whole, as transformers' GGUF
            // loader adds them; one not spelled in the byte alphabet is a llama.cpp mislabel
            // it skips, and so do we.
            for (id, kind) in kinds.enumerated() where (kind == 3 || kind == 4) && ByteLevel.decode(tokens[id]) != nil {
                definition.addedTokens.append((tokens[id], id))
            }
        }
        for (key, slot, itemSlot) in [("tokenizer.ggml.bos_token_id", \TokenizerDefinition.bos, \TokenizerDefinition.bosItem),
                                      ("tokenizer.ggml.eos_token_id", \.eos, \.eosItem)] {
            definition[keyPath: itemSlot] = key
            guard let value = metadata[key] else { continue }
            guard let id = value.intValue else { throw fail(.badValue, key, "expected an integer id, found \(value)") }
            definition[keyPath: slot] = id
        }
        let addBOSKey = "tokenizer.ggml.add_bos_token"
        if let value = metadata[addBOSKey] {
            guard let adds = value.boolValue else { throw fail(.badValue, addBOSKey, "expected a bool, found \(value)") }
            definition.addsBOS = adds
        }
        return try Tokenizer(definition)
    }

    /// A GGUF file's tokenizer.
    public static func load(ggufFile path: String) throws -> Tokenizer {
        let gguf = try translatingFormatErrors { try GGUFFile(path: path) }
        return try load(ggufMetadata: gguf.metadata, file: path)
    }

    /// Finds and loads whichever tokenizer files an HF directory holds, in this order:
    /// `tokenizer.json`; `vocab.json` + `merges.txt`; `encoder.json` + `vocab.bpe`; a single `.gguf`.
    public static func load(directory: String) throws -> Tokenizer {
        let manager = FileManager.default
        func path(_ name: String) -> String? {
            let full = (directory as NSString).appendingPathComponent(name)
            return manager.fileExists(atPath: full) ? full : nil
        }
        if let json = path("tokenizer.json") { return try load(tokenizerJSON: json) }
        if let vocab = path("vocab.json"), let merges = path("merges.txt") { return try load(vocabJSON: vocab, merges: merges) }
        if let encoder = path("encoder.json"), let bpe = path("vocab.bpe") { return try load(encoderJSON: encoder, vocabBPE: bpe) }
        guard let names = try? manager.contentsOfDirectory(atPath: directory) else {
            throw TokenizerError(.io, file: directory, "cannot list the directory")
        }
        let ggufs = names.filter { $0.hasSuffix(".gguf") }.sorted()
        if ggufs.count == 1, let gguf = path(ggufs[0]) { return try load(ggufFile: gguf) }
        let found = ggufs.count > 1 ? " (\(ggufs.count) .gguf files: name one)" : ""
        throw TokenizerError(.missingKey, file: directory,
                             "no tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe or single .gguf file\(found)")
    }

    // MARK: - Shared parts

    private static func loadVocabularyAndMerges(_ vocabPath: String, _ mergesPath: String) throws -> Tokenizer {
        let json = try translatingFormatErrors { try JSONValue.parse(contentsOf: vocabPath) }
        let file = JSONFile(path: vocabPath)
        let vocab = try file.require(json, "top level", "an object of token -> id", \.objectValue)
        var vocabulary = try Vocabulary(expecting: vocab.count, file: vocabPath, item: "top level")
        guard !vocab.isEmpty else { throw file.bad("top level", "the vocabulary has no tokens") }
        // In id order, so that of two entries at fault the error names the same one every time.
        for (token, id) in vocab.sorted(by: { ($0.value.doubleValue ?? 0, $0.key) < ($1.value.doubleValue ?? 0, $1.key) }) {
            let item = quoted(token)
            try vocabulary.add(token, id: file.require(id, item, "an integer id", \.intValue), file: vocabPath, item: item)
        }
        let data = try translatingFormatErrors { try readRegularFile(mergesPath) }
        // One merge a line; a "#version" header and blank lines are skipped. Error messages
        // give 1-based line numbers, so the merges remember theirs.
        var merges: [(left: String, right: String)] = []
        var lines: [Int] = []
        for (i, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = line.hasSuffix("\r") ? line.dropLast() : line
            if line.isEmpty || line.hasPrefix("#version") { continue }
            guard merges.count < Tokenizer.maximumMerges else {
                throw TokenizerError(.badValue, file: mergesPath, item: "line \(i + 1)",
                                     "more than the \(Tokenizer.maximumMerges) merges a tokenizer may have")
            }
            merges.append(try splitMerge(String(line), file: mergesPath, item: "line \(i + 1)"))
            lines.append(i + 1)
        }
        var definition = TokenizerDefinition(
            file: mergesPath, vocabulary: vocabulary, merges: merges, mergeItem: { "line \(lines[$0])" }, rules: [.gpt2])
        definition.vocabularyItem = "top level"
        // HF's GPT2Tokenizer matches <|endoftext|> whole in text.
        if let id = vocabulary.ids["<|endoftext|>"] { definition.addedTokens.append(("<|endoftext|>", id)) }
        try applyTokenizerConfig(besides: vocabPath, to: &definition)
        return try Tokenizer(definition)
    }

    /// "a b" as a merge; a merge has exactly two tokens.
    private static func splitMerge(_ text: String, file: String, item: String) throws -> (left: String, right: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw TokenizerError(.badValue, file: file, item: item, "a merge is two tokens separated by one space, found \(quoted(text))")
        }
        return (String(parts[0]), String(parts[1]))
    }

    /// BOS and EOS from a `tokenizer_config.json` in the same directory (`bos_token`, `eos_token`,
    /// as strings or `{"content": ...}`). Without one, GPT-2's `<|endoftext|>` serves as both,
    /// as HF's GPT-2 configuration has it.
    private static func applyTokenizerConfig(besides path: String, to definition: inout TokenizerDefinition) throws {
        let vocabulary = definition.vocabulary
        let endOfText = vocabulary.ids["<|endoftext|>"]
        let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("tokenizer_config.json")
        guard FileManager.default.fileExists(atPath: configPath) else {
            if !definition.addsBOS { definition.bos = endOfText }
            definition.eos = endOfText
            return
        }
        let config = try translatingFormatErrors { try JSONValue.parse(contentsOf: configPath) }
        guard config.objectValue != nil else {
            throw TokenizerError(.badValue, file: configPath, item: "top level", "expected an object")
        }
        func id(_ key: String) throws -> Int? {
            guard let value = config[key], !value.isNull else { return nil }
            guard let token = value.stringValue ?? value["content"]?.stringValue else {
                throw TokenizerError(.badValue, file: configPath, item: key, "expected a token string or {\"content\": ...}")
            }
            guard let id = vocabulary.ids[token] else {
                throw TokenizerError(.unknownToken, file: configPath, item: key, "\(quoted(token)) is not in the vocabulary")
            }
            return id
        }
        if !definition.addsBOS {
            definition.bos = try id("bos_token")
            definition.bosItem = "tokenizer_config.json bos_token"
        }
        definition.eos = try id("eos_token")
        definition.eosItem = "tokenizer_config.json eos_token"
    }

    /// Appends the split rules of a tokenizer.json pre-tokenizer, noting its ByteLevel step.
    private static func preTokenizer(_ json: JSONValue, item: String, file: JSONFile,
                                     rules: inout [SplitRule], byteLevel: inout Bool) throws {
        let type = try file.require(json["type"], "\(item).type", "a string", \.stringValue)
        if byteLevel {
            throw file.unsupported(item, "a \(type) step after ByteLevel would split byte-level text")
        }
        switch type {
        case "Sequence":
            let steps = try file.require(json["pretokenizers"], "\(item).pretokenizers", "an array", \.arrayValue)
            for (i, step) in steps.enumerated() {
                try preTokenizer(step, item: "\(item).pretokenizers[\(i)]", file: file, rules: &rules, byteLevel: &byteLevel)
            }
        case "ByteLevel":
            if json["add_prefix_space"]?.boolValue == true {
                throw file.unsupported("\(item).add_prefix_space", "add_prefix_space is not implemented")
            }
            if json["use_regex"]?.boolValue ?? true { rules.append(.gpt2) }
            byteLevel = true
        case "Split":
            guard let pattern = json["pattern"]?["Regex"]?.stringValue else {
                throw file.unsupported("\(item).pattern", "only Regex split patterns are implemented")
            }
            guard let rule = SplitRule.recognising(pattern: pattern) else {
                throw file.unsupported("\(item).pattern", "split pattern \(quoted(pattern)) is not one Loupe implements (GPT-2's, Llama-3's)")
            }
            guard json["behavior"]?.stringValue == "Isolated", json["invert"]?.boolValue != true else {
                throw file.unsupported("\(item).behavior", "only Isolated, non-inverted splits are implemented")
            }
            rules.append(rule)
        case "Digits":
            rules.append(.digits(individual: json["individual_digits"]?.boolValue ?? false))
        default:
            throw file.unsupported("\(item).type", "pre-tokenizer \(quoted(type)) is not one Loupe implements (ByteLevel, Split, Digits, Sequence)")
        }
    }

    /// Checks the decoder is HF's ByteLevel one (alone or in a Sequence), which `decode` implements.
    private static func decoder(_ json: JSONValue, item: String, file: JSONFile) throws {
        let type = json["type"]?.stringValue
        if type == "ByteLevel" { return }
        if type == "Sequence", let steps = json["decoders"]?.arrayValue, steps.count == 1 {
            return try decoder(steps[0], item: "\(item).decoders[0]", file: file)
        }
        throw file.unsupported(item, "decoder \(type.map(quoted) ?? "null"); Loupe implements the ByteLevel decoder only")
    }

    /// The id of the special token a TemplateProcessing post-processor puts before the text,
    /// and the entry it comes from.
    private static func leadingSpecialToken(_ json: JSONValue, item: String, file: JSONFile,
                                            vocabulary: Vocabulary) throws -> (id: Int, item: String)? {
        switch json["type"]?.stringValue {
        case "Sequence":
            for (i, processor) in (json["processors"]?.arrayValue ?? []).enumerated() {
                if let found = try leadingSpecialToken(processor, item: "\(item).processors[\(i)]", file: file, vocabulary: vocabulary) {
                    return found
                }
            }
            return nil
        case "TemplateProcessing":
            guard let name = json["single"]?.arrayValue?.first?["SpecialToken"]?["id"]?.stringValue else { return nil }
            let idsItem = "\(item).special_tokens[\(quoted(name))].ids"
            if let ids = json["special_tokens"]?[name]?["ids"], !ids.isNull {
                let first = try file.require(ids.arrayValue?.first, "\(idsItem)[0]", "an integer id", \.intValue)
                return (first, "\(idsItem)[0]")
            }
            guard let id = vocabulary.ids[name] else {
                throw TokenizerError(.unknownToken, file: file.path, item: "\(item).single[0]",
                                     "the special token \(quoted(name)) is not in the vocabulary")
            }
            return (id, "\(item).single[0]")
        default:
            return nil
        }
    }
}

/// Error helpers for one JSON file.
private struct JSONFile {
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

private func quoted(_ text: String) -> String { "\"\(text)\"" }

/// A JSON value in an error message: scalars as they are, containers by kind only.
private func describe(_ value: JSONValue) -> String {
    switch value {
    case .null: "null"
    case .bool(let b): "\(b)"
    case .number(let n): "\(n)"
    case .string(let s): quoted(s)
    case .array(let a): "an array of \(a.count)"
    case .object: "an object"
    }
}
