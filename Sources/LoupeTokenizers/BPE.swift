import Foundation

/// BPE over token ids, as HF's `BPE` model does: a pre-token starts as the ids of its bytes
/// (byte-level BPE) or of its characters (SentencePiece-style BPE), which are merged pairwise,
/// lowest merge rank first.
struct BytePairModel: Sendable {
    let alphabet: Alphabet
    /// (left id, right id) packed into one key -> (rank, merged id).
    let merges: [UInt64: Merge]
    /// With `ignore_merges` (Llama-3), a pre-token that is itself a token is taken whole.
    let wholeTokens: [[UInt8]: Int]?
    /// HF's `unk_token`: stands in for what the vocabulary cannot spell (else it is dropped).
    let unknownToken: Int?
    let fusesUnknown: Bool

    /// What a pre-token starts as.
    enum Alphabet: Sendable {
        /// Each byte is the token that spells it in GPT-2's byte alphabet (nil: no such token).
        case bytes([Int?])
        /// Each character is its own token; one the vocabulary lacks becomes the `<0xNN>` tokens
        /// of its UTF-8 bytes when `byteFallback` (indexed by byte) holds them all.
        case characters([UInt32: Int], byteFallback: [Int?]?)
    }

    struct Merge: Sendable {
        let rank: Int32
        let id: Int32
    }

    static func key(_ left: Int, _ right: Int) -> UInt64 { UInt64(left) << 32 | UInt64(right) }

    /// The ids of one pre-token, given as UTF-8.
    func encode(_ bytes: ArraySlice<UInt8>) -> [Int] {
        if let whole = wholeTokens?[Array(bytes)] { return [whole] }
        var symbols: [Int] = []
        symbols.reserveCapacity(bytes.count)
        // HF's `merge_word` holds an unknown token back until a character the vocabulary has
        // (or the end) comes, so byte-fallback tokens in between go before it.
        var pendingUnknown = 0
        func flushUnknown() {
            if let unknown = unknownToken { symbols += repeatElement(unknown, count: pendingUnknown) }
            pendingUnknown = 0
        }
        func add(_ id: Int) {
            flushUnknown()
            symbols.append(id)
        }
        func miss() {
            guard unknownToken != nil else { return }  // HF drops it, and so do we
            if !(fusesUnknown && pendingUnknown > 0) { pendingUnknown += 1 }
        }
        switch alphabet {
        case .bytes(let table):
            for byte in bytes {
                if let id = table[Int(byte)] { add(id) } else { miss() }
            }
        case .characters(let table, let byteFallback):
            var i = bytes.startIndex
            while i < bytes.endIndex {
                let (scalar, length) = Self.scalar(in: bytes, at: i)
                if let id = table[scalar] {
                    add(id)
                } else if let byteFallback, bytes[i..<(i + length)].allSatisfy({ byteFallback[Int($0)] != nil }) {
                    for byte in bytes[i..<(i + length)] { symbols.append(byteFallback[Int(byte)]!) }
                } else {
                    miss()
                }
                i += length
            }
        }
        flushUnknown()
        return symbols.count > 1 ? merge(symbols) : symbols
    }

    /// The scalar whose UTF-8 starts at `i` of valid UTF-8, and its length in bytes.
    private static func scalar(in bytes: ArraySlice<UInt8>, at i: Int) -> (UInt32, Int) {
        let lead = UInt32(bytes[i])
        switch lead {
        case ..<0x80: return (lead, 1)
        case ..<0xE0: return ((lead & 0x1F) << 6 | UInt32(bytes[i + 1] & 0x3F), 2)
        case ..<0xF0: return ((lead & 0x0F) << 12 | UInt32(bytes[i + 1] & 0x3F) << 6 | UInt32(bytes[i + 2] & 0x3F), 3)
        default:
            return ((lead & 0x07) << 18 | UInt32(bytes[i + 1] & 0x3F) << 12 | UInt32(bytes[i + 2] & 0x3F) << 6
                    | UInt32(bytes[i + 3] & 0x3F), 4)
        }
    }

    /// HF's `Word::merge_all`: a priority queue of adjacent pairs keyed by (rank, position),
    /// over a linked list of symbols. Popping the leftmost lowest-ranked pair and re-queueing
    /// its new neighbours is what makes the result identical to HF's, and keeps long pieces
    /// (a run of 10,000 spaces) at O(n log n).
    private func merge(_ initial: [Int]) -> [Int] {
        var ids = initial
        var next = Array(1...ids.count)
        next[ids.count - 1] = -1
        var previous = Array(-1..<(ids.count - 1))
        var alive = [Bool](repeating: true, count: ids.count)
        var queue = PairQueue()
        for i in 0..<(ids.count - 1) {
            if let m = merges[Self.key(ids[i], ids[i + 1])] { queue.push(rank: m.rank, position: i, id: m.id) }
        }
        while let top = queue.pop() {
            let position = top.position
            guard alive[position], next[position] >= 0 else { continue }
            let right = next[position]
            // A queued pair goes stale when either side has merged since.
            guard let m = merges[Self.key(ids[position], ids[right])], m.id == top.id else { continue }
            ids[position] = Int(m.id)
            alive[right] = false
            next[position] = next[right]
            if next[right] >= 0 { previous[next[right]] = position }
            if previous[position] >= 0, let m = merges[Self.key(ids[previous[position]], ids[position])] {
                queue.push(rank: m.rank, position: previous[position], id: m.id)
            }
            if next[position] >= 0, let m = merges[Self.key(ids[position], ids[next[position]])] {
                queue.push(rank: m.rank, position: position, id: m.id)
            }
        }
        return ids.indices.compactMap { alive[$0] ? ids[$0] : nil }
    }
}

/// A binary min-heap of candidate merges, ordered by rank and then position.
private struct PairQueue {
    struct Entry {
        let rank: Int32
        let position: Int
        let id: Int32
        func precedes(_ other: Entry) -> Bool {
            rank != other.rank ? rank < other.rank : position < other.position
        }
    }

    private var heap: [Entry] = []

    mutating func push(rank: Int32, position: Int, id: Int32) {
        heap.append(Entry(rank: rank, position: position, id: id))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].precedes(heap[smallest]) { smallest = left }
                if right < heap.count, heap[right].precedes(heap[smallest]) { smallest = right }
                if smallest == parent { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}

/// Pre-token bytes -> ids, shared by every thread that encodes with one tokenizer. Text repeats
/// its words, so most pre-tokens are found here and skip BPE.
final class PieceCache: @unchecked Sendable {
    // NSLock rather than Synchronization's Mutex, which needs macOS 15 and the package allows 14.
    private let lock = NSLock()
    private var entries: [[UInt8]: [Int]] = [:]
    /// HF caches up to 10,000 words; pieces longer than `maximumKeyLength` bytes are not kept.
    private let capacity = 50_000
    static let maximumKeyLength = 256

    func ids(for bytes: ArraySlice<UInt8>, compute: (ArraySlice<UInt8>) -> [Int]) -> [Int] {
        guard bytes.count <= Self.maximumKeyLength else { return compute(bytes) }
        // Byte arrays, not Strings, as keys: String equality is canonical equivalence, which
        // would make "é" and "e\u{301}" one key.
        let key = Array(bytes)
        if let hit = lock.withLock({ entries[key] }) { return hit }
        let ids = compute(bytes)
        lock.withLock {
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[key] = ids
        }
        return ids
    }
}
