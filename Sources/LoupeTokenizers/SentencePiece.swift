import Foundation
import LoupeFormats

extension Tokenizer {
    /// SentencePiece BPE from a GGUF file (`tokenizer.ggml.model = llama`), as transformers'
    /// GGUF loader builds it: characters with byte fallback to `<0xNN>` tokens, and merges from
    /// the file or, when it has none, derived from the vocabulary (`sentencePieceMerges`).
    /// `general.architecture` picks the rest:
    /// - gemma, gemma2, gemma3 (GemmaTokenizer): spaces become "▁", with no prefix; tokens of
    ///   spaces stored as real spaces are respelled as "▁"s; merges follow vocabulary order,
    ///   since Gemma's scores do not.
    /// - any other (LlamaTokenizer): Metaspace with a "▁" before the start of the text; merges
    ///   follow `tokenizer.ggml.scores`.
    /// phi3, which transformers builds another way, is rejected.
    static func sentencePiece(_ gguf: GGUFMetadata, tokens: [String]) throws -> TokenizerDefinition {
        let architectureKey = "general.architecture"
        let architecture = gguf.metadata[architectureKey]?.stringValue
        if architecture == "phi3" {
            throw gguf.fail(.unsupported, architectureKey, "phi3's SentencePiece tokenizer (a Prepend normalizer) is not implemented")
        }
        let isGemma = ["gemma", "gemma2", "gemma3"].contains(architecture)
        let tokensKey = "tokenizer.ggml.tokens"
        let spelled = isGemma ? tokens.map(respellingSpaces) : tokens
        let vocabulary = try Vocabulary(list: spelled, file: gguf.file, item: tokensKey)

        let mergesKey = "tokenizer.ggml.merges"
        let merges: TokenizerDefinition.Merges
        if gguf.metadata[mergesKey] != nil {
            merges = .spelled(try gguf.merges(mergesKey))
        } else if isGemma {
            merges = .resolved(try sentencePieceMerges(vocabulary, file: gguf.file) { -Double($0) })
        } else {
            let scoresKey = "tokenizer.ggml.scores"
            guard let values = gguf.metadata[scoresKey]?.arrayValue, values.count == tokens.count else {
                throw gguf.fail(.missingKey, scoresKey, "expected an array of \(tokens.count) scores, one per token, to derive merges from")
            }
            let scores = try values.enumerated().map { i, value in
                guard let score = value.doubleValue, !score.isNaN else {
                    throw gguf.fail(.badValue, "\(scoresKey)[\(i)]", "expected a number, found \(value)")
                }
                return score
            }
            merges = .resolved(try sentencePieceMerges(vocabulary, file: gguf.file) { scores[$0] })
        }

        var definition = TokenizerDefinition(file: gguf.file, vocabulary: vocabulary, merges: merges,
                                             mergeItem: { "\(mergesKey)[\($0)]" }, rules: [])
        definition.mergesItem = mergesKey
        definition.alphabet = .characters(byteFallback: true)
        definition.fusesUnknown = true
        // The tokenizer classes' own unknown token, not the file's id; with every byte in the
        // vocabulary it is never needed.
        if vocabulary.id("<unk>") != nil { definition.unknownToken = "<unk>" }
        definition.unknownItem = "<unk>"
        let toSpace = DecoderStep.replace("▁", " ")
        if isGemma {
            definition.normalizer = [.replace(" ", "▁")]
            definition.rules = [.literal([" "], .mergedWithPrevious)]
            definition.decoder = [toSpace, .byteFallback, .fuse]
        } else {
            definition.metaspace = Metaspace(replacement: "▁", prepend: .first)
            definition.decoder = [toSpace, .byteFallback, .fuse, .strip(content: " ", start: 1, stop: 0)]
        }
        return definition
    }

    /// GemmaTokenizer looks tokens of spaces up as "▁"s, but Gemma files store them as spaces:
    /// transformers respells a token of whitespace that holds a space as that many "▁" (by
    /// Python's `" " in t and not t.strip()`).
    private static func respellingSpaces(_ token: String) -> String {
        let scalars = token.unicodeScalars
        guard scalars.contains(" "), scalars.allSatisfy(isPythonSpace) else { return token }
        return String(repeating: "▁", count: scalars.count)
    }

    /// Python's `str.isspace`: White_Space, and the separators U+001C...U+001F.
    private static func isPythonSpace(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value)
    }

    /// Tokens longer than this are not cut into merges (Gemma's longest is 31 characters): a
    /// hostile file's megabyte token would cost a megabyte of strings per character.
    static let maximumMergedLength = 1024

    /// The merges transformers' `generate_merges` derives from a vocabulary: every cut of a
    /// token into two tokens, best first: by the merged token's `score` (given its id; a token
    /// listed twice counts as its last id), then the longer left part, then the longer right
    /// part, then the merged token's first place in the vocabulary.
    static func sentencePieceMerges(_ vocabulary: Vocabulary, file: String,
                                    score: (Int) -> Double) throws -> [(left: Int, right: Int, merged: Int)] {
        struct Candidate {
            let score: Double
            let leftLength: Int32, rightLength: Int32
            let order: Int32
            let left: Int32, right: Int32, merged: Int32
        }
        var candidates: [Candidate] = []
        let index = SliceIndex(vocabulary.tokens)
        // Spellings listed more than once, cut at their first place only.
        var repeated: Set<Int> = []
        var boundaries: [Int] = []
        try index.bytes.withUnsafeBytes { bytes in
            for first in vocabulary.tokens.indices {
                let token = UnsafeRawBufferPointer(rebasing: bytes[index.starts[first]..<index.starts[first + 1]])
                guard vocabulary.tokens[first] != nil, let merged = index.id(token) else { continue }
                if merged != first || repeated.contains(merged) {
                    guard repeated.insert(merged).inserted else { continue }
                }
                guard token.count <= maximumMergedLength else {
                    throw TokenizerError(.unsupported, file: file, item: "tokenizer.ggml.tokens[\(first)]",
                                         "a token of \(token.count) bytes is longer than the \(maximumMergedLength) Loupe derives merges for")
                }
                boundaries.removeAll(keepingCapacity: true)
                for i in token.indices.dropFirst() where token[i] & 0xC0 != 0x80 { boundaries.append(i) }
                let length = boundaries.count + 1
                let tokenScore = score(merged)
                for (k, cut) in boundaries.enumerated() {
                    guard let left = index.id(UnsafeRawBufferPointer(rebasing: token[..<cut])),
                          let right = index.id(UnsafeRawBufferPointer(rebasing: token[cut...])) else { continue }
                    candidates.append(Candidate(score: tokenScore, leftLength: Int32(k + 1), rightLength: Int32(length - k - 1),
                                                order: Int32(first), left: Int32(left), right: Int32(right), merged: Int32(merged)))
                }
            }
        }
        guard candidates.count <= maximumMerges else {
            throw TokenizerError(.badValue, file: file, item: "tokenizer.ggml.tokens",
                                 "the vocabulary implies \(candidates.count) merges, more than the \(maximumMerges) a tokenizer may have")
        }
        candidates.sort { a, b in
            if a.score != b.score { return a.score > b.score }
            if a.leftLength != b.leftLength { return a.leftLength > b.leftLength }
            if a.rightLength != b.rightLength { return a.rightLength > b.rightLength }
            return a.order < b.order
        }
        return candidates.map { (Int($0.left), Int($0.right), Int($0.merged)) }
    }
}

/// Token ids by UTF-8 spelling, looked up by a slice of bytes without making a String: deriving
/// Gemma's merges looks up some two million slices, and the time goes in cache misses, so slots
/// are small and hold a hash tag that rejects most wrong candidates before their bytes are
/// compared. A spelling listed twice gives its last id.
private struct SliceIndex {
    /// Every token's UTF-8, one after another; token `i` is `bytes[starts[i]..<starts[i + 1]]`.
    let bytes: [UInt8]
    let starts: [Int]
    /// Open addressing, a power of two long.
    private var slots: [Slot]

    private struct Slot {
        var id: Int32 = -1
        var tag: UInt32 = 0
    }

    init(_ tokens: [String?]) {
        var bytes: [UInt8] = [], starts = [0]
        for token in tokens {
            bytes += token?.utf8 ?? "".utf8
            starts.append(bytes.count)
        }
        self.bytes = bytes
        self.starts = starts
        var capacity = 16
        while capacity < tokens.count * 2 { capacity *= 2 }
        var slots = [Slot](repeating: Slot(), count: capacity)
        bytes.withUnsafeBytes { all in
            for id in tokens.indices where tokens[id] != nil {
                let key = UnsafeRawBufferPointer(rebasing: all[starts[id]..<starts[id + 1]])
                let hash = Self.hash(key)
                var slot = hash & (capacity - 1)
                while slots[slot].id >= 0, !Self.matches(slots[slot], key, hash, all, starts) { slot = (slot + 1) & (capacity - 1) }
                slots[slot] = Slot(id: Int32(id), tag: Self.tag(hash))
            }
        }
        self.slots = slots
    }

    func id(_ key: UnsafeRawBufferPointer) -> Int? {
        bytes.withUnsafeBytes { all in
            let hash = Self.hash(key)
            var slot = hash & (slots.count - 1)
            while slots[slot].id >= 0 {
                if Self.matches(slots[slot], key, hash, all, starts) { return Int(slots[slot].id) }
                slot = (slot + 1) & (slots.count - 1)
            }
            return nil
        }
    }

    /// Seeded per process, so that a hostile file cannot choose colliding spellings.
    private static func hash(_ key: UnsafeRawBufferPointer) -> Int {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        return hasher.finalize()
    }

    private static func tag(_ hash: Int) -> UInt32 { UInt32(truncatingIfNeeded: hash >> 32) }

    private static func matches(_ slot: Slot, _ key: UnsafeRawBufferPointer, _ hash: Int, _ all: UnsafeRawBufferPointer,
                                _ starts: [Int]) -> Bool {
        guard slot.tag == tag(hash) else { return false }
        let start = starts[Int(slot.id)]
        return starts[Int(slot.id) + 1] - start == key.count
            && (key.isEmpty || memcmp(key.baseAddress!, all.baseAddress! + start, key.count) == 0)
    }
}
