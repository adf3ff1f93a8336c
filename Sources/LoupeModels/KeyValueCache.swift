import LoupeTensor

/// Every layer's attention keys and values of a pass, kept so that later passes can
/// continue the same sequences without recomputing their earlier positions.
public final class KeyValueCache: @unchecked Sendable {
    /// Per layer: [rows · positions, keyValueHeads · headDim].
    public private(set) var keys: [Tensor?]
    public private(set) var values: [Tensor?]
    public private(set) var rows = 0
    /// Positions per row held.
    public private(set) var positions = 0

    public init(layers: Int) {
        keys = Array(repeating: nil, count: layers)
        values = Array(repeating: nil, count: layers)
    }

    func store(layer: Int, keys k: Tensor, values v: Tensor, rows: Int) {
        self.rows = rows
        positions = k.rowCount / rows
        keys[layer] = k.copy()
        values[layer] = v.copy()
    }

    /// The first `positions` positions of row `row`, repeated for `copies` rows.
    func prefix(row: Int, positions count: Int, copies: Int) -> KeyValueCache {
        let result = KeyValueCache(layers: keys.count)
        result.rows = copies
        result.positions = count
        let total = positions
        func repeatRows(_ t: Tensor?) -> Tensor? {
            guard let t else { return nil }
            let width = t.columnCount
            let out = Tensor(zeros: [copies * count, width])
            let source = t.data + row * total * width
            for copy in 0..<copies { (out.data + copy * count * width).update(from: source, count: count * width) }
            return out
        }
        result.keys = keys.map(repeatRows)
        result.values = values.map(repeatRows)
        return result
    }
}

extension Tensor {
    /// Rows of this matrix and of `other`, interleaved per sequence: for each of `rows`
    /// sequences, this tensor's block of rows, then `other`'s.
    func interleaving(_ other: Tensor, rows: Int) -> Tensor {
        let width = columnCount
        precondition(other.columnCount == width && rowCount % rows == 0 && other.rowCount % rows == 0)
        let (mine, theirs) = (rowCount / rows, other.rowCount / rows)
        let out = Tensor(zeros: [rows * (mine + theirs), width])
        let first = contiguous()
        for r in 0..<rows {
            let target = out.slice(axis: 0, (r * (mine + theirs))..<(r * (mine + theirs) + mine))
            target.assign(from: first.slice(axis: 0, (r * mine)..<((r + 1) * mine)))
            out.slice(axis: 0, (r * (mine + theirs) + mine)..<((r + 1) * (mine + theirs)))
                .assign(from: other.slice(axis: 0, (r * theirs)..<((r + 1) * theirs)))
        }
        return out
    }
}
