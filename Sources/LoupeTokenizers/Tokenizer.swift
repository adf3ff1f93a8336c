/// A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama-3 and their kin) that gives the same ids
/// as HF `tokenizers`. Safe to share between threads. Load one with the `load` functions.
public final class Tokenizer: Sendable {
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    /// Whether `encode` puts `bosTokenID` first (tokenizer.json's post-processor, GGUF's
    /// `tokenizer.ggml.add_bos_token`). No other special token is ever added.
    public let addsBOS: Bool

    private let vocabulary: Vocabulary
    private let model: BytePairModel
    private let rules: [SplitRule]
    private let addedTokens: AddedTokenMatcher
    /// The bytes each id stands for, for `decode`.
    private let tokenBytes: [[UInt8]]
    private let cache = PieceCache()

    /// Builds the tokenizer a loader has read, resolving merges to ids. Errors name `file`.
    init(_ definition: TokenizerDefinition) throws {
        let vocabulary = definition.vocabulary
        let file = definition.file
        func id(of token: String, item: String, role: String) throws -> Int {
            guard let id = vocabulary.ids[token] else {
                throw TokenizerError(.unknownToken, file: file, item: item, "\(role) \"\(token)\" is not in the vocabulary")
            }
            return id
        }

        guard !vocabulary.tokens.isEmpty else {
            throw TokenizerError(.badValue, file: file, item: definition.vocabularyItem, "the vocabulary has no tokens")
        }
        guard definition.merges.count <= Self.maximumMerges else {
            throw TokenizerError(.badValue, file: file, item: definition.mergesItem,
                                 "\(definition.merges.count) merges is more than the \(Self.maximumMerges) a tokenizer may have")
        }
        var merges: [UInt64: BytePairModel.Merge] = [:]
        merges.reserveCapacity(definition.merges.count)
        for (rank, merge) in definition.merges.enumerated() {
            let item = definition.mergeItem(rank)
            let left = try id(of: merge.left, item: item, role: "the merge's left token")
            let right = try id(of: merge.right, item: item, role: "the merge's right token")
            let merged = try id(of: merge.left + merge.right, item: item, role: "the merged token")
            // A repeated pair takes its last rank, as in HF's merge map.
            merges[BytePairModel.key(left, right)] = .init(rank: Int32(rank), id: Int32(merged))
        }

        var wholeTokens: [[UInt8]: Int]?
        if definition.ignoresMerges {
            wholeTokens = [:]
            for (token, id) in vocabulary.ids { if let bytes = ByteLevel.decode(token) { wholeTokens![bytes] = id } }
        }
        let unknown = try definition.unknownToken.map { try id(of: $0, item: "unk_token", role: "the unknown token") }
        model = BytePairModel(
            byteTokens: ByteLevel.characters.map { vocabulary.ids[String($0)] },
            merges: merges, wholeTokens: wholeTokens, unknownToken: unknown, fusesUnknown: definition.fusesUnknown)

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
        // HF's ByteLevel decoder: a token spelled in the byte alphabet stands for its bytes,
        // any other (an added token like "<think>" stored as is) for its own UTF-8.
        tokenBytes = vocabulary.tokens.map { token in token.map { ByteLevel.decode($0) ?? Array($0.utf8) } ?? [] }
        bosTokenID = definition.bos
        eosTokenID = definition.eos
        addsBOS = definition.addsBOS
    }

    /// The ids of `text`: added tokens found whole, the rest pre-tokenized and merged. Characters
    /// whose bytes have no token are dropped (HF does the same when there is no unknown token).
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        if addsBOS, let bos = bosTokenID { ids.append(bos) }
        let scanned = ScannedText(text)
        forEachPiece(of: scanned) { piece in
            switch piece {
            case .token(let id): ids.append(id)
            case .text(let range): ids += cache.ids(for: scanned.bytes(range), compute: model.encode)
            }
        }
        return ids
    }

    /// The pieces BPE works on, in order: added tokens whole, the rest as the pre-tokenizer
    /// cuts it. They join up to `text`. Shows why a string tokenizes the way it does.
    public func preTokenize(_ text: String) -> [String] {
        var pieces: [String] = []
        let scanned = ScannedText(text)
        forEachPiece(of: scanned) { piece in
            switch piece {
            case .token(let id): pieces.append(vocabulary.tokens[id] ?? "")
            case .text(let range): pieces.append(String(String.UnicodeScalarView(scanned.scalars[range])))
            }
        }
        return pieces
    }

    /// Cuts `text` at added tokens, then runs the split rules over each stretch between them.
    private func forEachPiece(of text: ScannedText, _ body: (AddedTokenMatcher.Segment) -> Void) {
        var pieces: [Range<Int>] = [], split: [Range<Int>] = []
        for segment in addedTokens.segments(text) {
            guard case .text(let range) = segment else {
                body(segment)
                continue
            }
            pieces = [range]
            for rule in rules {
                split.removeAll(keepingCapacity: true)
                for piece in pieces { rule.split(text, piece, into: &split) }
                swap(&pieces, &split)
            }
            for piece in pieces { body(.text(piece)) }
        }
    }

    /// The text of `ids`. Byte sequences that are not valid UTF-8 (a token sequence cut inside
    /// a character) become U+FFFD, one per maximal invalid subsequence, as HF's
    /// `String::from_utf8_lossy` does. Ids outside the vocabulary are skipped, as HF skips them.
    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        for id in ids where tokenBytes.indices.contains(id) { bytes += tokenBytes[id] }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The vocabulary entry for `id` as the file spells it ("ĠJohn").
    public func tokenString(_ id: Int) -> String? {
        vocabulary.tokens.indices.contains(id) ? vocabulary.tokens[id] : nil
    }

    public func id(forToken token: String) -> Int? { vocabulary.ids[token] }

    /// One more than the largest id (added tokens included).
    public var vocabularySize: Int { vocabulary.tokens.count }

    /// More merges than any real tokenizer has (the largest have about 500,000).
    static let maximumMerges = 1 << 22
}

/// Tokens by id and ids by token.
struct Vocabulary: Sendable {
    private(set) var tokens: [String?] = []
    private(set) var ids: [String: Int] = [:]
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
        for (id, token) in list.enumerated() { ids[token] = id }
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
        if let existing = ids[token], existing != id {
            throw TokenizerError(.badValue, file: file, item: item, "\"\(token)\" is given both id \(existing) and id \(id)")
        }
        tokens[id] = token
        ids[token] = id
    }
}

/// What a loader reads from its files, before merges are resolved to ids.
struct TokenizerDefinition {
    var file: String
    var vocabulary: Vocabulary
    var merges: [(left: String, right: String)]
    /// Names merge `i` in error messages ("vocab.bpe line 5", "model.merges[3]").
    var mergeItem: (Int) -> String
    /// Name the vocabulary, the merges, and where the BOS and EOS ids come from, in errors.
    var vocabularyItem = "vocabulary"
    var mergesItem = "merges"
    var bosItem = "bos token"
    var eosItem = "eos token"
    var rules: [SplitRule]
    var addedTokens: [(content: String, id: Int)] = []
    var ignoresMerges = false
    var unknownToken: String? = nil
    var fusesUnknown = false
    var bos: Int? = nil
    var eos: Int? = nil
    var addsBOS = false
}
