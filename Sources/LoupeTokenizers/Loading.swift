import Foundation
import LoupeFormats

extension Tokenizer {
    /// An HF GPT-2 style directory's `vocab.json` and `merges.txt`.
    public static func load(vocabJSON: String, merges: String) throws -> Tokenizer {
        try loadVocabularyAndMerges(vocabJSON, merges)
    }

    /// OpenAI's GPT-2 files, `encoder.json` and `vocab.bpe` (the same formats under older names).
    public static func load(encoderJSON: String, vocabBPE: String) throws -> Tokenizer {
        try loadVocabularyAndMerges(encoderJSON, vocabBPE)
    }

    /// The tokenizer a GGUF file's metadata describes, as transformers' GGUF loader builds it.
    /// `file` names the file in errors. `tokenizer.ggml.model` picks the kind:
    /// - "gpt2": byte-level BPE with the file's merges; `tokenizer.ggml.pre` picks the split rules:
    ///   - "gpt2", "default" and no key: GPT-2's pattern, as transformers' GGUF loader does
    ///     (llama.cpp runs extra regexes for "default"; files that say it are old conversions);
    ///   - "smollm": digits one by one, then GPT-2's pattern, as SmolLM2's own tokenizer.json
    ///     and llama.cpp do (transformers' GGUF loader leaves the digit step out, and so differs
    ///     from the trained tokenizer on text with digits);
    ///   - "llama-bpe", "llama3", "llama-v3": Llama-3's pattern; "qwen2": Qwen2's.
    ///   Others are rejected rather than guessed.
    /// - "llama": SentencePiece BPE with byte fallback (see `sentencePiece`).
    public static func load(ggufMetadata metadata: [String: GGUFValue], file: String) throws -> Tokenizer {
        let gguf = GGUFMetadata(metadata: metadata, file: file)
        let modelKey = "tokenizer.ggml.model"
        guard let model = metadata[modelKey]?.stringValue else { throw gguf.fail(.missingKey, modelKey, "missing") }
        let tokensKey = "tokenizer.ggml.tokens"
        let tokens = try gguf.strings(tokensKey)
        var definition: TokenizerDefinition
        switch model {
        case "gpt2": definition = try byteLevel(gguf, tokens: tokens)
        case "llama": definition = try sentencePiece(gguf, tokens: tokens)
        default:
            throw gguf.fail(.unsupported, modelKey, "tokenizer model \"\(model)\"; Loupe reads byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\") only")
        }
        definition.vocabularyItem = tokensKey

        let typesKey = "tokenizer.ggml.token_type"
        if let types = metadata[typesKey] {
            guard let values = types.arrayValue, values.count == tokens.count else {
                throw gguf.fail(.badValue, typesKey, "expected an array of \(tokens.count) integers, one per token, found \(types.arrayValue.map { "an array of \($0.count)" } ?? "\(types)")")
            }
            let kinds = try values.enumerated().map { i, value in
                guard let kind = value.intValue else { throw gguf.fail(.badValue, "\(typesKey)[\(i)]", "expected an integer, found \(value)") }
                return kind
            }
            // Control (3) and user-defined (4) tokens are matched whole in the raw text, as
            // transformers' GGUF loader adds them. A control token of a byte-level vocabulary
            // not spelled in the byte alphabet is a llama.cpp mislabel it skips, and so do we;
            // a user-defined token is added only if the vocabulary (as respelled) has it.
            for (id, kind) in kinds.enumerated() where kind == 3 || kind == 4 {
                let token = tokens[id]
                if model == "gpt2", ByteLevel.decode(token) == nil { continue }
                guard let vocabularyID = definition.vocabulary.id(token) else {
                    if kind == 4 { continue }
                    throw gguf.fail(.unsupported, "\(typesKey)[\(id)]", "control token \(quoted(token)) is not in the vocabulary as respelled; transformers would add it as a new token")
                }
                definition.addedTokens.append((token, vocabularyID))
            }
        }
        for (key, slot, itemSlot) in [("tokenizer.ggml.bos_token_id", \TokenizerDefinition.bos, \TokenizerDefinition.bosItem),
                                      ("tokenizer.ggml.eos_token_id", \.eos, \.eosItem)] {
            definition[keyPath: itemSlot] = key
            guard let value = metadata[key] else { continue }
            guard let id = value.intValue else { throw gguf.fail(.badValue, key, "expected an integer id, found \(value)") }
            definition[keyPath: slot] = id
        }
        // transformers (as llama.cpp) adds BOS to a SentencePiece vocabulary that does not say.
        definition.addsBOS = try gguf.bool("tokenizer.ggml.add_bos_token") ?? (model == "llama")
        let addEOSKey = "tokenizer.ggml.add_eos_token"
        if try gguf.bool(addEOSKey) == true {
            throw gguf.fail(.unsupported, addEOSKey, "true is not supported: Loupe adds a BOS token only")
        }
        return try Tokenizer(definition)
    }

    /// Byte-level BPE from a GGUF file: the file's merges, split rules from `tokenizer.ggml.pre`.
    private static func byteLevel(_ gguf: GGUFMetadata, tokens: [String]) throws -> TokenizerDefinition {
        let preKey = "tokenizer.ggml.pre"
        let pre = gguf.metadata[preKey]?.stringValue ?? "default"
        let rules: [SplitRule]
        switch pre {
        case "gpt2", "default": rules = [.gpt2]
        case "smollm": rules = [.digits(individual: true), .gpt2]
        case "llama-bpe", "llama3", "llama-v3": rules = [.llama3]
        case "qwen2": rules = [.qwen2]
        default: throw gguf.fail(.unsupported, preKey, "pre-tokenizer \"\(pre)\" is not one Loupe implements (gpt2, default, smollm, llama-bpe, qwen2)")
        }
        let mergesKey = "tokenizer.ggml.merges"
        var definition = TokenizerDefinition(
            file: gguf.file, vocabulary: try Vocabulary(list: tokens, file: gguf.file, item: "tokenizer.ggml.tokens"),
            merges: .spelled(try gguf.merges(mergesKey)), mergeItem: { "\(mergesKey)[\($0)]" }, rules: rules)
        definition.mergesItem = mergesKey
        return definition
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
            file: mergesPath, vocabulary: vocabulary, merges: .spelled(merges), mergeItem: { "line \(lines[$0])" }, rules: [.gpt2])
        definition.vocabularyItem = "top level"
        // HF's GPT2Tokenizer matches <|endoftext|> whole in text.
        if let id = vocabulary.id("<|endoftext|>") { definition.addedTokens.append(("<|endoftext|>", id)) }
        try applyTokenizerConfig(besides: vocabPath, to: &definition)
        return try Tokenizer(definition)
    }

    /// "a b" as a merge; a merge has exactly two tokens.
    static func splitMerge(_ text: String, file: String, item: String) throws -> (left: String, right: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw TokenizerError(.badValue, file: file, item: item, "a merge is two tokens separated by one space, found \(quoted(text))")
        }
        return (String(parts[0]), String(parts[1]))
    }

    /// BOS and EOS from a `tokenizer_config.json` in the same directory (`bos_token`, `eos_token`,
    /// as strings or `{"content": ...}`). Without one, GPT-2's `<|endoftext|>` serves as both,
    /// as HF's GPT-2 configuration has it.
    static func applyTokenizerConfig(besides path: String, to definition: inout TokenizerDefinition) throws {
        let vocabulary = definition.vocabulary
        let endOfText = vocabulary.id("<|endoftext|>")
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
            guard let id = vocabulary.id(token) else {
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
}

/// A GGUF file's metadata, read with errors that name the file and key.
struct GGUFMetadata {
    let metadata: [String: GGUFValue]
    let file: String

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

    /// Merges written "a b".
    func merges(_ key: String) throws -> [(left: String, right: String)] {
        let texts = try strings(key)
        guard texts.count <= Tokenizer.maximumMerges else {
            throw fail(.badValue, key, "\(texts.count) merges is more than the \(Tokenizer.maximumMerges) a tokenizer may have")
        }
        return try texts.enumerated().map { i, text in try Tokenizer.splitMerge(text, file: file, item: "\(key)[\(i)]") }
    }

    func bool(_ key: String) throws -> Bool? {
        guard let value = metadata[key] else { return nil }
        guard let flag = value.boolValue else { throw fail(.badValue, key, "expected a bool, found \(value)") }
        return flag
    }
}
