/// Token sequences of different lengths run as one left-padded batch.
///
/// Row r holds `padding[r]` pad slots and then its tokens, so every row's last token sits
/// in the last column. Pad slots are masked out of attention and positions count from each
/// row's first real token, so each row computes exactly what it would alone.
public struct TokenBatch: Sendable, Equatable {
    public let sequences: [[Int]]
    /// The padded length: the longest sequence.
    public let length: Int
    /// Pad slots at the start of each row.
    public let padding: [Int]

    public init(_ sequences: [[Int]]) {
        self.sequences = sequences
        self.length = sequences.map(\.count).max() ?? 0
        self.padding = sequences.map { (sequences.map(\.count).max() ?? 0) - $0.count }
    }

    public var rows: Int { sequences.count }
    /// Rows x length: the number of token slots the forward pass computes.
    public var slots: Int { rows * length }

    /// Token ids row by row with pad slots filled by `pad` (they are masked, so any id works).
    public func paddedIDs(pad: Int = 0) -> [Int] {
        var ids = [Int]()
        ids.reserveCapacity(slots)
        for (row, tokens) in sequences.enumerated() {
            ids.append(contentsOf: repeatElement(pad, count: padding[row]))
            ids.append(contentsOf: tokens)
        }
        return ids
    }

    /// The position id of each slot (0 for pad slots), as HF computes it from the attention mask.
    public func positionIDs() -> [Int] {
        var positions = [Int]()
        positions.reserveCapacity(slots)
        for row in 0..<rows {
            for column in 0..<length { positions.append(max(column - padding[row], 0)) }
        }
        return positions
    }
}

/// Where the forward pass computes logits: the unembedding is the largest matrix multiply
/// of a small model, so it runs only where someone reads it.
public enum LogitRows: Sendable, Equatable {
    /// Every slot: [rows, length, vocab].
    case all
    /// The last position of each row: [rows, 1, vocab].
    case last
    /// None: the pass stops after the final norm and returns it ([rows, length, hidden]).
    case none
}

/// Checked once per layer; returning true stops the forward pass with `ModelError.cancelled`.
public typealias CancellationCheck = @Sendable () -> Bool
