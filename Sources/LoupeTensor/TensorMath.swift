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

    /// The element-wise ops with two operands that gradients pass through.
    public enum BinaryOp: String, CaseIterable, Sendable {
        case add, sub, mul, div, pow

        func callAsFunction(_ x: Float, _ y: Float) -> Float {
            switch self {
            case .add: return x + y
            case .sub: return x - y
            case .mul: return x * y
            case .div: return x / y
            case .pow: return Foundation.pow(x, y)
            }
        }

        /// (∂/∂x, ∂/∂y) at (x, y), whose result is z.
        func partials(_ x: Float, _ y: Float, _ z: Float) -> (Float, Float) {
            switch self {
            case .add: return (1, 1)
            case .sub: return (1, -1)
            case .mul: return (y, x)
            case .div: return (1 / y, -z / y)
            case .pow: return (y == 0 ? 0 : y * Foundation.pow(x, y - 1), x > 0 ? z * Foundation.log(x) : 0)
            }
        }
    }

    /// The element-wise ops with one operand that gradients pass through.
    public enum UnaryOp: String, CaseIterable, Sendable {
        case neg, exp, log, abs, sqrt

        func callAsFunction(_ x: Float) -> Float {
            switch self {
            case .neg: return -x
            case .exp: return Foundation.exp(x)
            case .log: return Foundation.log(x)
            case .abs: return Swift.abs(x)
            case .sqrt: return x.squareRoot()
            }
        }

        /// d/dx at x, whose result is y.
        func derivative(_ x: Float, _ y: Float) -> Float {
            switch self {
            case .neg: return -1
            case .exp: return y
            case .log: return 1 / x
            case .abs: return x > 0 ? 1 : x < 0 ? -1 : 0
            case .sqrt: return 0.5 / y
            }
        }
    }

    /// `op` element-wise with numpy broadcasting.
    public static func binary(_ a: Tensor, _ b: Tensor, _ op: BinaryOp) -> Tensor {
        let shape = broadcastShape(a.shape, b.shape)!
        let out = Tensor(zeros: shape)
        let (wideA, wideB) = (broadcast(a, to: shape), broadcast(b, to: shape))
        let ao = offsets(wideA), bo = offsets(wideB)
        let pa = a.storage.pointer, pb = b.storage.pointer, po = out.data
        for i in 0..<ao.count { po[i] = op(pa[ao[i]], pb[bo[i]]) }
        GradientTape.record(out, from: [a, b]) { tape in
            let (x, y) = (tape.save(wideA), tape.save(wideB))
            let views = (a: GradientView(wideA), b: GradientView(wideB), out: GradientView(out))
            let result = tape.save(out)
            return { g in
                guard let dz = g.of(views.out) else { return }
                let dx = Tensor(zeros: shape), dy = Tensor(zeros: shape)
                for i in 0..<dz.count {
                    let (px, py) = op.partials(x.data[i], y.data[i], result.data[i])
                    dx.data[i] = dz.data[i] * px
                    dy.data[i] = dz.data[i] * py
                }
                g.add(dx, to: views.a)  // a broadcast operand's elements receive the sum of theirs
                g.add(dy, to: views.b)
            }
        }
        return out
    }

    /// `op` element-wise.
    public static func unary(_ a: Tensor, _ op: UnaryOp) -> Tensor {
        let out = Tensor(shape: a.shape, values: a.toArray().map { op($0) })
        GradientTape.record(out, from: [a]) { tape in
            let (x, y, views) = (tape.save(a), tape.save(out), (a: GradientView(a), out: GradientView(out)))
            return { g in
                guard let dy = g.of(views.out) else { return }
                let dx = Tensor(zeros: a.shape)
                for i in 0..<dx.count { dx.data[i] = dy.data[i] * op.derivative(x.data[i], y.data[i]) }
                g.add(dx, to: views.a)
            }
        }
        return out
    }

    /// `f` element-wise, for code outside the trace language (a plugin's own arithmetic). It
    /// has no gradient: a backward that reaches its result fails, naming it.
    public static func map(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        let out = Tensor(shape: a.shape, values: a.toArray().map(f))
        undifferentiable(out, from: [a], "an element-wise function given as a closure (TensorMath.map)")
        return out
    }

    /// Records that gradients cannot pass back through `output`: a backward that reaches it throws.
    public static func undifferentiable(_ output: Tensor, from inputs: [Tensor], _ what: String) {
        GradientTape.record(output, from: inputs) { _ in
            let view = GradientView(output)
            return { g in
                if g.of(view) != nil { throw GradientError("no gradient passes back through \(what)") }
            }
        }
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
        let out = Tensor(shape: shape, values: result)
        if kind != .argmax && kind != .argmin {  // indices are constants
            GradientTape.record(out, from: [t]) { _ in
                let moved = GradientView(t.permuted((0..<t.rank).filter { !axes.contains($0) } + axes))
                let view = GradientView(out)
                return { g in
                    guard let dy = g.of(view)?.contiguous() else { return }
                    // Sum and mean spread each output's gradient over its elements; max and min
                    // give it to the first element that attains the result.
                    let dx = Tensor(zeros: moved.shape)
                    for o in 0..<outer {
                        let row = (o * inner)..<(o * inner + inner)
                        switch kind {
                        case .sum: for e in row { dx.data[e] = dy.data[o] }
                        case .mean: for e in row { dx.data[e] = dy.data[o] / Float(inner) }
                        default:
                            let attained = row.first { values[$0] == result[o] || (values[$0].isNaN && result[o].isNaN) }
                            if let e = attained { dx.data[e] = dy.data[o] }
                        }
                    }
                    g.add(dx, to: moved)
                }
            }
        }
        return out
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
        let result = restore(Tensor(shape: kept + [t.shape[dim]], values: out), movedFrom: dim, rank: t.rank)
        GradientTape.record(result, from: [t]) { _ in
            let moved = GradientView(t.permuted((0..<t.rank).filter { $0 != dim } + [dim]))
            let view = GradientView(result)
            return { g in
                guard let flowing = g.of(view) else { return }
                // softmax: dx = y·(dy − Σ y·dy); log-softmax: dx = dy − softmax·Σ dy.
                let (dy, _, _) = moveToEnd(flowing, [dim])
                let dx = Tensor(zeros: moved.shape)
                for o in 0..<outer {
                    let base = o * inner
                    var total = 0.0
                    for j in 0..<inner { total += Double(log ? dy[base + j] : dy[base + j] * out[base + j]) }
                    for j in 0..<inner {
                        dx.data[base + j] = log ? dy[base + j] - Foundation.exp(out[base + j]) * Float(total)
                                                : out[base + j] * (dy[base + j] - Float(total))
                    }
                }
                g.add(dx, to: moved)
            }
        }
        return result
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
        let result = restore(Tensor(shape: kept + [k], values: out), movedFrom: dim, rank: t.rank)
        if !indices { undifferentiable(result, from: [t], "topk") }
        return result
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
        // The operands are private copies (whose records carry gradients on to a and b), so
        // the backward can read them as they are.
        GradientTape.record(out, from: [lhs, rhs]) { _ in
            let views = (lhs: GradientView(lhs), rhs: GradientView(rhs), out: GradientView(out))
            return { g in
                guard let dOut = g.of(views.out), k > 0 else { return }
                g.accumulate(views.lhs) { dLhs in  // dA = dC · Bᵀ
                    for i in 0..<batches {
                        gemm(rows: m, columns: k, inner: n, a: dOut.data + i * m * n, lda: n, transposeA: false,
                             b: rhs.data + i * k * n, ldb: n, transposeB: true, c: dLhs.data + i * m * k, ldc: k, accumulate: true)
                    }
                }
                g.accumulate(views.rhs) { dRhs in  // dB = Aᵀ · dC
                    for i in 0..<batches {
                        gemm(rows: k, columns: n, inner: m, a: lhs.data + i * m * k, lda: k, transposeA: true,
                             b: dOut.data + i * m * n, ldb: n, transposeB: false, c: dRhs.data + i * k * n, ldc: n, accumulate: true)
                    }
                }
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
