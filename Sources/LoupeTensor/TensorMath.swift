import Foundation

// Tensor arithmetic beyond the kernels, as the trace language needs it: numpy-style
// broadcasting, element-wise ops, reductions over dims, softmax over any dim, batched
// matmul, cat/stack and top-k. Written for small values (a row of hidden states, a logit);
// every op takes strided views and returns a fresh contiguous tensor.

public enum TensorMath {
    /// The numpy broadcast of two shapes, or nil when they are incompatible.
    public static func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        let rank = max(a.count, b.count)
        var out = [Int](repeating: 1, count: rank)
        for i in 0..<rank {
            let x = i < rank - a.count ? 1 : a[i - (rank - a.count)]
            let y = i < rank - b.count ? 1 : b[i - (rank - b.count)]
            if x == y || y == 1 { out[i] = x } else if x == 1 { out[i] = y } else { return nil }
        }
        return out
    }

    /// True when `from` broadcasts to exactly `to` (assignment: the value may not grow the target).
    public static func broadcasts(_ from: [Int], to: [Int]) -> Bool {
        broadcastShape(from, to) == to
    }

    /// A view of `t` broadcast to `shape` (stride 0 along expanded dims).
    public static func broadcast(_ t: Tensor, to shape: [Int]) -> Tensor {
        let extra = shape.count - t.rank
        var strides = [Int](repeating: 0, count: shape.count)
        for i in 0..<t.rank where !(t.shape[i] == 1 && shape[extra + i] != 1) {
            strides[extra + i] = t.strides[i]
        }
        return Tensor(storage: t.storage, shape: shape, strides: strides, offset: t.offset)
    }

    /// Offsets into `t.storage` of its elements in row-major order.
    public static func offsets(_ t: Tensor) -> [Int] {
        let n = t.count
        guard n > 0 else { return [] }
        var out = [Int](repeating: 0, count: n)
        guard t.rank > 0 else { out[0] = t.offset; return out }
        var index = [Int](repeating: 0, count: t.rank)
        var position = t.offset
        for i in 0..<n {
            out[i] = position
            var axis = t.rank - 1
            while axis >= 0 {
                index[axis] += 1
                position += t.strides[axis]
                if index[axis] < t.shape[axis] { break }
                position -= t.strides[axis] * t.shape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
        return out
    }

    public static func scalar(_ value: Float) -> Tensor { Tensor(shape: [], values: [value]) }

    /// A view with a new axis of size 1 at `axis`.
    public static func unsqueeze(_ t: Tensor, _ axis: Int) -> Tensor {
        var shape = t.shape, strides = t.strides
        shape.insert(1, at: axis)
        strides.insert(0, at: axis)
        return Tensor(storage: t.storage, shape: shape, strides: strides, offset: t.offset)
    }

    public static func binary(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        let shape = broadcastShape(a.shape, b.shape)!
        let out = Tensor(zeros: shape)
        let ao = offsets(broadcast(a, to: shape)), bo = offsets(broadcast(b, to: shape))
        let pa = a.storage.pointer, pb = b.storage.pointer, po = out.data
        for i in 0..<ao.count { po[i] = f(pa[ao[i]], pb[bo[i]]) }
        return out
    }

    public static func unary(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        Tensor(shape: a.shape, values: a.toArray().map(f))
    }

    /// `t` with `dims` moved to the end, as a contiguous copy, and the sizes of the kept and
    /// moved dims.
    private static func moveToEnd(_ t: Tensor, _ dims: [Int]) -> (values: [Float], kept: [Int], inner: Int) {
        let keptAxes = (0..<t.rank).filter { !dims.contains($0) }
        let moved = t.permuted(keptAxes + dims)
        return (moved.toArray(), keptAxes.map { t.shape[$0] }, dims.map { t.shape[$0] }.reduce(1, *))
    }

    public enum Reduction: String, CaseIterable, Sendable { case sum, mean, max, min, argmax, argmin }

    /// Reduces over `dims` (normalized, distinct; nil: all dims).
    public static func reduce(_ t: Tensor, _ kind: Reduction, dims: [Int]?, keepdim: Bool) -> Tensor {
        let axes = (dims ?? Array(0..<t.rank)).sorted()
        let (values, kept, inner) = moveToEnd(t, axes)
        let outer = inner == 0 ? kept.reduce(1, *) : values.count / inner
        var result = [Float](repeating: 0, count: outer)
        for o in 0..<outer {
            let row = values[(o * inner)..<(o * inner + inner)]
            switch kind {
            case .sum: result[o] = Float(row.reduce(0.0) { $0 + Double($1) })
            case .mean: result[o] = Float(row.reduce(0.0) { $0 + Double($1) } / Double(max(inner, 1)))
            case .max: result[o] = row.contains { $0.isNaN } ? .nan : (row.max() ?? -.infinity)
            case .min: result[o] = row.contains { $0.isNaN } ? .nan : (row.min() ?? .infinity)
            case .argmax, .argmin:
                var best = 0
                for (j, v) in row.enumerated() {
                    let current = row[row.startIndex + best]
                    if current.isNaN { break }
                    if v.isNaN || (kind == .argmax ? v > current : v < current) { best = j }
                }
                result[o] = Float(best)
            }
        }
        var shape = kept
        if keepdim {
            shape = t.shape
            for a in axes { shape[a] = 1 }
        }
        return Tensor(shape: shape, values: result)
    }

    /// Softmax (or log-softmax) along `dim`.
    public static func softmax(_ t: Tensor, dim: Int, log: Bool) -> Tensor {
        let (values, kept, inner) = moveToEnd(t, [dim])
        var out = values
        let outer = inner == 0 ? 0 : values.count / inner
        for o in 0..<outer {
            let base = o * inner
            var peak = -Float.infinity
            for j in 0..<inner { peak = Swift.max(peak, values[base + j]) }
            var total = 0.0
            for j in 0..<inner { total += Double(Foundation.exp(values[base + j] - peak)) }
            let logTotal = Float(Foundation.log(total))
            for j in 0..<inner {
                let shifted = values[base + j] - peak
                out[base + j] = log ? shifted - logTotal : Float(Double(Foundation.exp(shifted)) / total)
            }
        }
        return restore(Tensor(shape: kept + [t.shape[dim]], values: out), movedFrom: dim, rank: t.rank)
    }

    /// Undoes `moveToEnd(t, [dim])` on a tensor whose last axis came from `dim`.
    private static func restore(_ t: Tensor, movedFrom dim: Int, rank: Int) -> Tensor {
        var order = Array(0..<(rank - 1))
        order.insert(rank - 1, at: dim)
        return t.permuted(order).copy()
    }

    /// The k largest (or smallest) entries along `dim`, best first; NaN sorts last.
    public static func topk(_ t: Tensor, k: Int, dim: Int, largest: Bool, indices: Bool) -> Tensor {
        let (values, kept, inner) = moveToEnd(t, [dim])
        let outer = inner == 0 ? kept.reduce(1, *) : values.count / inner
        var out = [Float]()
        out.reserveCapacity(outer * k)
        for o in 0..<outer {
            let base = o * inner
            let order = (0..<inner).sorted { i, j in
                let a = values[base + i], b = values[base + j]
                if a.isNaN != b.isNaN { return b.isNaN }
                if a == b || a.isNaN { return i < j }
                return largest ? a > b : a < b
            }
            for j in order.prefix(k) { out.append(indices ? Float(j) : values[base + j]) }
        }
        return restore(Tensor(shape: kept + [k], values: out), movedFrom: dim, rank: t.rank)
    }

    /// numpy's matmul shape rule, or nil.
    public static func matmulShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        guard !a.isEmpty, !b.isEmpty else { return nil }
        let a2 = a.count == 1 ? [1] + a : a, b2 = b.count == 1 ? b + [1] : b
        guard a2[a2.count - 1] == b2[b2.count - 2] else { return nil }
        guard let batch = broadcastShape(Array(a2.dropLast(2)), Array(b2.dropLast(2))) else { return nil }
        var shape = batch
        if a.count > 1 { shape.append(a2[a2.count - 2]) }
        if b.count > 1 { shape.append(b2[b2.count - 1]) }
        return shape
    }

    public static func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
        let result = matmulShape(a.shape, b.shape)!
        let a2 = a.rank == 1 ? a.reshaped([1] + a.shape) : a
        let b2 = b.rank == 1 ? b.reshaped(b.shape + [1]) : b
        let (m, k, n) = (a2.shape[a2.rank - 2], a2.shape[a2.rank - 1], b2.shape[b2.rank - 1])
        let batch = broadcastShape(Array(a2.shape.dropLast(2)), Array(b2.shape.dropLast(2)))!
        let batches = batch.reduce(1, *)
        let lhs = broadcast(a2, to: batch + [m, k]).copy(), rhs = broadcast(b2, to: batch + [k, n]).copy()
        let out = Tensor(zeros: batch + [m, n])
        if k > 0 {
            for i in 0..<batches {
                gemm(rows: m, columns: n, inner: k, a: lhs.data + i * m * k, lda: k, transposeA: false,
                     b: rhs.data + i * k * n, ldb: n, transposeB: false, c: out.data + i * m * n, ldc: n)
            }
        }
        return out.reshaped(result)
    }

    public static func cat(_ parts: [Tensor], dim: Int) -> Tensor {
        var shape = parts[0].shape
        shape[dim] = parts.map { $0.shape[dim] }.reduce(0, +)
        let out = Tensor(zeros: shape)
        var start = 0
        for part in parts {
            let size = part.shape[dim]
            if size > 0 { out.slice(axis: dim, start..<(start + size)).assign(from: part) }
            start += size
        }
        return out
    }

    public static func stack(_ parts: [Tensor], dim: Int) -> Tensor {
        cat(parts.map { unsqueeze($0, dim) }, dim: dim)
    }
}
