/// A BPE tokenizer that gives the same ids as HF `tokenizers`: byte-level (GPT-2, SmolLM2,
/// Llama-3, Qwen2, GPT-NeoX and their kin) or SentencePiece-style with byte fallback (Llama-2,
/// Gemma). Safe to share between threads. Load one with the `load` functions.
public final class Tokenizer: Sendable {
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    /// Whether `encode` puts `bosTokenID` first (tokenizer.json's post-processor, GGUF's
    /// `tokenizer.ggml.add_bos_token`). No other special token is ever added.
    public let addsBOS: Bool

    private let vocabulary: Vocabulary
    private let model: BytePairModel
    /// Added tokens matched in the raw text, and those matched after normalization.
    private let addedTokens: AddedTokenMatcher
    private let normalizedAddedTokens: AddedTokenMatcher
    private let normalizer: [NormalizerStep]
    private let metaspace: Metaspace?
    private let rules: [SplitRule]
    private let decoder: [DecoderStep]
    private let cache = PieceCache()

    /// Builds the tokenizer a loader has read, resolving merges to ids. Errors name `file`.
    init(_ definition: TokenizerDefinition) throws {
        let vocabulary = definition.vocabulary
        let file = definition.file
        func id(of token: String, item: String, role: String) throws -> Int {
            guard let id = vocabulary.id(token) else {
                throw TokenizerError(.unknownToken, file: file, item: item, "\(role) \"\(token)\" is not in the vocabulary")
            }
            return id
        }

        guard !vocabulary.tokens.isEmpty else {
            throw TokenizerError(.badValue, file: file, item: definition.vocabularyItem, "the vocabulary has no tokens")
        }
        var merges: [UInt64: BytePairModel.Merge] = [:]
        switch definition.merges {
        case .spelled(let spelled):
            guard spelled.count <= Self.maximumMerges else {
                throw TokenizerError(.badValue, file: file, item: definition.mergesItem,
                                     "\(spelled.count) merges is more than the \(Self.maximumMerges) a tokenizer may have")
            }
            merges.reserveCapacity(spelled.count)
            for (rank, merge) in spelled.enumerated() {
                let item = definition.mergeItem(rank)
                let left = try id(of: merge.left, item: item, role: "the merge's left token")
                let right = try id(of: merge.right, item: item, role: "the merge's right token")
                let merged = try id(of: merge.left + merge.right, item: item, role: "the merged token")
                // A repeated pair takes its last rank, as in HF's merge map.
                merges[BytePairModel.key(left, right)] = .init(rank: Int32(rank), id: Int32(merged))
            }
        case .resolved(let resolved):
            merges.reserveCapacity(resolved.count)
            for (rank, merge) in resolved.enumerated() {
                merges[BytePairModel.key(merge.left, merge.right)] = .init(rank: Int32(rank), id: Int32(merge.merged))
            }
        }

        // The bytes a pre-token must be to be taken whole under `ignore_merges`.
        let spelling: (String) -> [UInt8]?
        let alphabet: BytePairModel.Alphabet
        switch definition.alphabet {
        case .byteLevel:
            spelling = ByteLevel.decode
            alphabet = .bytes(ByteLevel.characters.map { vocabulary.id(String($0)) })
        case .characters(let byteFallback):
            spelling = { Array($0.utf8) }
            var characters: [UInt32: Int] = [:]
            for (id, token) in vocabulary.tokens.enumerated() {
                guard let token, token.unicodeScalars.count == 1, let scalar = token.unicodeScalars.first,
                      vocabulary.id(token) == id else { continue }
                characters[scalar.value] = id
            }
            alphabet = .characters(characters, byteFallback: byteFallback ? (0..<256).map { vocabulary.id(ByteFallback.token($0)) } : nil)
        }
        var wholeTokens: [[UInt8]: Int]?
        if definition.ignoresMerges {
            wholeTokens = [:]
            for (id, token) in vocabulary.tokens.enumerated() {
                if let token, vocabulary.id(token) == id, let bytes = spelling(token) { wholeTokens![bytes] = id }
            }
        }
        let unknown = try definition.unknownToken.map { try id(of: $0, item: definition.unknownItem, role: "the unknown token") }
        model = BytePairModel(alphabet: alphabet, merges: merges, wholeTokens: wholeTokens,
                              unknownToken: unknown, fusesUnknown: definition.fusesUnknown)

        for (role, id, item) in [("BOS", definition.bos, definition.bosItem), ("EOS", definition.eos, definition.eosItem)] {
            guard let id else { continue }
            guard vocabulary.tokens.indices.contains(id) else {
                throw TokenizerError(.unknownToken, file: file, item: item, "the \(role) token's id \(id) is outside the vocabulary of \(vocabulary.tokens.count)")
            }
            guard vocabulary.tokens[id] != nil else {
                throw TokenizerError(.unknownToken, file: file, item: item, "the \(role) token's id \(id) is one the vocabulary skips: no token has it")
            }
        }
        if definition.addsBOS, definition.bos == nil {
            throw TokenizerError(.missingKey, file: file, item: definition.bosItem, "the tokenizer adds a BOS token but names none")
        }
        self.vocabulary = vocabulary
        rules = definition.rules
        addedTokens = AddedTokenMatcher(definition.addedTokens)
        normalizedAddedTokens = AddedTokenMatcher(definition.normalizedAddedTokens)
        normalizer = definition.normalizer
        metaspace = definition.metaspace
        decoder = definition.decoder
        bosTokenID = definition.bos
        eosTokenID = definition.eos
        addsBOS = definition.addsBOS
    }

    /// The ids of `text`: added tokens found whole, the rest normalized, pre-tokenized and merged.
    /// Characters the vocabulary cannot spell become the unknown token, or are dropped when
    /// there is none (HF does the same).
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        if addsBOS, let bos = bosTokenID { ids.append(bos) }
        forEachPiece(of: text) { piece in
            switch piece {
            case .token(let id): ids.append(id)
            case .text(let text, let range): ids += cache.ids(for: text.bytes(range), compute: model.encode)
            }
        }
        return ids
    }

    /// The pieces BPE works on, in order: added tokens whole, the rest normalized and cut as
    /// the pre-tokenizer cuts it ("▁Hello" where a SentencePiece vocabulary marks spaces).
    /// Without a normalizer they join up to `text`. Shows why a string tokenizes as it does.
    public func preTokenize(_ text: String) -> [String] {
        var pieces: [String] = []
        forEachPiece(of: text) { piece in
            switch piece {
            case .token(let id): pieces.append(vocabulary.tokens[id] ?? "")
            case .text(let text, let range): pieces.append(text.string(range))
            }
        }
        return pieces
    }

    private enum Piece {
        case token(Int)
        case text(ScannedText, Range<Int>)
    }

    /// HF's order: added tokens matched in the raw text; each stretch between them normalized;
    /// added tokens matched in the normalized text; each stretch between those rewritten by
    /// Metaspace and cut by the split rules.
    private func forEachPiece(of text: String, _ body: (Piece) -> Void) {
        var pieces: [Range<Int>] = [], split: [Range<Int>] = []
        let raw = ScannedText(text)
        for segment in addedTokens.segments(raw, in: 0..<raw.count) {
            guard case .text(let range) = segment else {
                if case .token(let id) = segment { body(.token(id)) }
                continue
            }
            let normalized = normalizer.isEmpty ? raw : ScannedText(NormalizerStep.apply(normalizer, to: raw.string(range)))
            let normalizedRange = normalizer.isEmpty ? range : 0..<normalized.count
            for inner in normalizedAddedTokens.segments(normalized, in: normalizedRange) {
                guard case .text(let innerRange) = inner else {
                    if case .token(let id) = inner { body(.token(id)) }
                    continue
                }
                var scanned = normalized
                pieces = [innerRange]
                if let metaspace {
                    // Metaspace's "first" scheme marks only the piece the text starts with.
                    let atStart = range.lowerBound == 0 && innerRange.lowerBound == normalizedRange.lowerBound
                    scanned = ScannedText(metaspace.apply(normalized.string(innerRange), atStart: atStart))
                    pieces = [0..<scanned.count]
                }
                for rule in rules {
                    split.removeAll(keepingCapacity: true)
                    for piece in pieces { rule.split(scanned, piece, into: &split) }
                    swap(&pieces, &split)
                }
                for piece in pieces where !piece.isEmpty { body(.text(scanned, piece)) }
            }
        }
    }

    /// The text of `ids`, as HF's decoder makes it: each id's token string through the decoder
    /// steps (the byte alphabet or `<0xNN>` tokens back to bytes, "▁" back to spaces ...).
    /// Invalid UTF-8 (a token sequence cut inside a character) becomes U+FFFD as HF makes it.
    /// Ids outside the vocabulary are skipped, as HF skips them.
    public func decode(_ ids: [Int]) -> String {
        let tokens = ids.compactMap { vocabulary.tokens.indices.contains($0) ? vocabulary.tokens[$0] : nil }
        return DecoderStep.apply(decoder, to: tokens)
    }

    /// The vocabulary entry for `id` as the file spells it ("ĠJohn", "▁John").
    public func tokenString(_ id: Int) -> String? {
        vocabulary.tokens.indices.contains(id) ? vocabulary.tokens[id] : nil
    }

    public func id(forToken token: String) -> Int? { vocabulary.id(token) }

    /// One more than the largest id (added tokens included).
    public var vocabularySize: Int { vocabulary.tokens.count }

    /// More merges than any real tokenizer has (the largest have about 500,000).
    static let maximumMerges = 1 << 22
}

/// A token's spelling as a dictionary key that compares UTF-8 bytes. String keys compare by
/// canonical equivalence, which would make "é" and "e\u{301}" (both in Gemma's vocabulary)
/// one token.
struct Spelling: Hashable, Sendable {
    let text: String

    init(_ text: String) {
        var text = text
        text.makeContiguousUTF8()
        self.text = text
    }

    static func == (a: Spelling, b: Spelling) -> Bool {
        var a = a.text, b = b.text
        return a.withUTF8 { a in b.withUTF8 { b in a.elementsEqual(b) } }
    }

    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// Tokens by id and ids by token.
struct Vocabulary: Sendable {
    private(set) var tokens: [String?] = []
    private(set) var ids: [Spelling: Int] = [:]
    /// Ids run below this: the tokens listed plus `maximumHoles`.
    private(set) var idLimit = 0

    /// More tokens than any real vocabulary has (the largest hold about 262,144): a hostile
    /// file could otherwise ask for any amount of memory.
    static let maximumCount = 1 << 22
    /// Ids may skip some numbers (HF loads such a vocabulary, with a warning), but no more
    /// than this many: an id far past the tokens listed would only make a huge table.
    static let maximumHoles = 1 << 16

    /// From a list indexed by id. A token listed twice maps to its last id, as in the dict
    /// transformers builds from a GGUF list (some published GGUF files repeat tokens; the
    /// earlier ids still decode).
    init(list: [String], file: String, item: String) throws {
        try Self.checkCount(list.count, file: file, item: item)
        tokens = list
        idLimit = list.count
        ids.reserveCapacity(list.count)
        for (id, token) in list.enumerated() { ids[Spelling(token)] = id }
    }

    /// An empty vocabulary that will be given `count` tokens with `add`.
    init(expecting count: Int, file: String, item: String) throws {
        try Self.checkCount(count, file: file, item: item)
        idLimit = count + Self.maximumHoles
        ids.reserveCapacity(count)
    }

    private static func checkCount(_ count: Int, file: String, item: String) throws {
        guard count <= maximumCount else {
            throw TokenizerError(.badValue, file: file, item: item, "\(count) tokens is more than the \(maximumCount) a vocabulary may hold")
        }
    }

    /// Adds `token` as `id`. An id out of range, an id given to two different tokens, or a
    /// token given two ids is an error naming `item`.
    mutating func add(_ token: String, id: Int, file: String, item: String) throws {
        guard id >= 0 else {
            throw TokenizerError(.badValue, file: file, item: item, "id \(id) of \"\(token)\" is negative")
        }
        guard id < idLimit else {
            throw TokenizerError(.badValue, file: file, item: item,
                                 "id \(id) of \"\(token)\" is out of range: the file lists \(idLimit - Self.maximumHoles) tokens, so ids run below \(idLimit)")
        }
        if id >= tokens.count { tokens += [String?](repeating: nil, count: id + 1 - tokens.count) }
        if let existing = tokens[id], existing != token {
            throw TokenizerError(.badValue, file: file, item: item, "id \(id) is given to both \"\(existing)\" and \"\(token)\"")
        }
        if let existing = ids[Spelling(token)], existing != id {
            throw TokenizerError(.badValue, file: file, item: item, "\"\(token)\" is given both id \(existing) and id \(id)")
        }
        tokens[id] = token
        ids[Spelling(token)] = id
    }

    /// The id of the token spelled exactly so (byte for byte).
    func id(_ token: String) -> Int? { ids[Spelling(token)] }
}

/// What a loader reads from its files, before merges are resolved to ids.
struct TokenizerDefinition {
    var file: String
    var vocabulary: Vocabulary
    var merges: Merges
    /// Names merge `i` in error messages ("vocab.bpe line 5", "model.merges[3]").
    var mergeItem: (Int) -> String
    /// Name the vocabulary, the merges, and where the special token ids come from, in errors.
    var vocabularyItem = "vocabulary"
    var mergesItem = "merges"
    var bosItem = "bos token"
    var eosItem = "eos token"
    var unknownItem = "unk_token"
    var rules: [SplitRule]
    var alphabet = Alphabet.byteLevel
    /// Added tokens matched whole in the raw text, and (HF's `normalized: true`) in the text
    /// the normalizer has made.
    var addedTokens: [(content: String, id: Int)] = []
    var normalizedAddedTokens: [(content: String, id: Int)] = []
    var normalizer: [NormalizerStep] = []
    var metaspace: Metaspace? = nil
    var decoder: [DecoderStep] = [.byteLevel]
    var ignoresMerges = false
    var unknownToken: String? = nil
    var fusesUnknown = false
    var bos: Int? = nil
    var eos: Int? = nil
    var addsBOS = false

    enum Merges {
        /// Merges as token strings, best first.
        case spelled([(left: String, right: String)])
        /// Merges already resolved to ids, best first.
        case resolved([(left: Int, right: Int, merged: Int)])
    }

    enum Alphabet {
        /// Byte-level BPE: tokens spell bytes in GPT-2's alphabet.
        case byteLevel
        /// SentencePiece-style BPE: tokens are text; with byte fallback, `<0xNN>` tokens spell
        /// bytes of characters the vocabulary lacks.
        case characters(byteFallback: Bool)
    }
}
