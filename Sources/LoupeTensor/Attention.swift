import Foundation

/// The sizes of one causal self-attention call over a left-padded batch.
///
/// Each of `batch` rows has `keys` slots of which the last `queryCounts[b]` are new: a full
/// forward pass has every count equal to keys; a pass that continues from cached keys and
/// values has fewer, and rows stacked from different continuations may have different
/// counts. Slot j of row b is padding when j < padding[b]; padding is never attended to.
/// Row b's keys and values start at row `b * keyStride` of their matrices: a cache that
/// grows by a slot per generated token keeps room for them (`keyStride` >= `keys`).
public struct AttentionGeometry: Sendable {
    public let batch: Int
    /// The most queries of any row: the pattern is laid out [batch, heads, queries, keys].
    public let queries: Int
    public let keys: Int
    /// Matrix rows from one batch row's keys to the next's.
    public let keyStride: Int
    public let heads: Int
    /// Fewer than `heads` with grouped-query attention: query head h reads key/value head
    /// h / (heads / keyValueHeads), as HF's repeat_kv does.
    public let keyValueHeads: Int
    public let headDim: Int
    public let padding: [Int]
    /// Queries of each row, and where each row's queries start among all query rows.
    public let queryCounts: [Int]
    public let queryOffsets: [Int]

    public init(batch: Int, queries: Int, keys: Int, heads: Int, keyValueHeads: Int, headDim: Int, padding: [Int]) {
        self.init(queryCounts: Array(repeating: queries, count: batch), keys: keys, heads: heads,
                  keyValueHeads: keyValueHeads, headDim: headDim, padding: padding)
    }

    public init(queryCounts: [Int], keys: Int, keyStride: Int? = nil, heads: Int, keyValueHeads: Int, headDim: Int, padding: [Int]) {
        precondition(queryCounts.allSatisfy { $0 <= keys } && heads % keyValueHeads == 0 && padding.count == queryCounts.count
                     && (keyStride ?? keys) >= keys)
        batch = queryCounts.count
        queries = queryCounts.max() ?? 0
        self.keys = keys
        self.keyStride = keyStride ?? keys
        self.heads = heads
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
        self.padding = padding
        self.queryCounts = queryCounts
        var offset = 0
        queryOffsets = queryCounts.map { count in defer { offset += count }; return offset }
    }

    /// Query rows over all rows of the batch.
    public var queryRows: Int { queryCounts.reduce(0, +) }
}

/// Attention probabilities [batch, heads, queries, keys]: softmax(q kᵀ · scale) under the
/// causal and padding mask. A row with fewer queries than `queries` leaves the rest zero.
///
/// `q` is [query rows, heads * headDim] and `k` [batch * keyStride, keyValueHeads * headDim];
/// both may be column slices of a wider matrix (GPT-2's fused c_attn output).
///
/// `window`: sliding-window attention (Mistral, Gemma's local layers): a query sees itself
/// and the `window - 1` positions before it, as HF's `sliding_window`. `softcap`: scores
/// become softcap · tanh(score / softcap) before the mask (Gemma 2).
public func attentionPattern(q: Tensor, k: Tensor, geometry g: AttentionGeometry, scale: Float,
                             window: Int? = nil, softcap: Float? = nil) -> Tensor {
    precondition(window.map { $0 > 0 } ?? true && softcap.map { $0 > 0 } ?? true)
    checkRows(q, g.queryRows, g.heads * g.headDim, "queries")
    checkRows(k, g.batch * g.keyStride, g.keyValueHeads * g.headDim, "keys")
    let pattern = Tensor(zeros: [g.batch, g.heads, g.queries, g.keys])
    let groups = g.heads / g.keyValueHeads
    let qStride = q.strides[0], kStride = k.strides[0]
    Parallel.forEachChunk(g.batch * g.heads, costPerItem: g.queries * g.keys * g.headDim) { pairs in
        for pair in pairs {
            let b = pair / g.heads, h = pair % g.heads
            let qBase = q.data + g.queryOffsets[b] * qStride + h * g.headDim
            let kBase = k.data + b * g.keyStride * kStride + (h / groups) * g.headDim
            for i in 0..<g.queryCounts[b] {
                let scores = pattern.data + ((b * g.heads + h) * g.queries + i) * g.keys
                let last = g.keys - g.queryCounts[b] + i  // this query's own slot
                // A padding slot's query sees only itself, so its row stays finite; no real
                // token ever reads it.
                // Padding sits on the left, so slots count positions back from `last`.
                var first = last < g.padding[b] ? last : g.padding[b]
                if let window { first = max(first, last - window + 1) }
                let qRow = qBase + i * qStride
                for j in 0..<g.keys {
                    guard j >= first && j <= last else { scores[j] = -.infinity; continue }
                    let score = dot(qRow, kBase + j * kStride, g.headDim) * scale
                    scores[j] = softcap.map { tanh(score / $0) * $0 } ?? score
                }
                softmaxRow(scores, g.keys)
            }
        }
    }
    GradientTape.record(pattern, from: [q, k]) { tape in
        let views = (q: GradientView(q), k: GradientView(k), pattern: GradientView(pattern))
        let saved = (q: tape.save(q), k: tape.save(k), pattern: tape.save(pattern))
        return { gradients in
            guard let dPattern = gradients.of(views.pattern) else { return }
            let (dq, dk) = patternBackward(dPattern.contiguous(), saved, g, scale: scale, softcap: softcap)
            gradients.add(dq, to: views.q)
            gradients.add(dk, to: views.k)
        }
    }
    return pattern
}

/// The gradients of `attentionPattern`'s q and k from its pattern's: through the softmax
/// (dS = P·(dP − Σ P·dP)), the soft-cap (· 1 − tanh²) and the scaled product. Parallel over
/// key/value heads: the query heads sharing one add into its keys' gradient in turn.
private func patternBackward(_ dPattern: Tensor, _ saved: (q: Tensor, k: Tensor, pattern: Tensor), _ g: AttentionGeometry,
                             scale: Float, softcap: Float?) -> (Tensor, Tensor) {
    let (q, k, p) = saved
    let dq = Tensor(zeros: q.shape), dk = Tensor(zeros: k.shape)
    let groups = g.heads / g.keyValueHeads
    let (qWidth, kWidth) = (q.columnCount, k.columnCount)
    Parallel.forEachChunk(g.batch * g.keyValueHeads, costPerItem: groups * g.queries * g.keys * g.headDim) { pairs in
        var dScores = [Float](repeating: 0, count: g.keys)
        for pair in pairs {
            let b = pair / g.keyValueHeads, kvHead = pair % g.keyValueHeads
            let kBase = k.data + b * g.keyStride * kWidth + kvHead * g.headDim
            let dkBase = dk.data + b * g.keyStride * kWidth + kvHead * g.headDim
            for h in (kvHead * groups)..<((kvHead + 1) * groups) {
                for i in 0..<g.queryCounts[b] {
                    let row = ((b * g.heads + h) * g.queries + i) * g.keys
                    let probabilities = p.data + row, dp = dPattern.data + row
                    var weighted: Float = 0
                    for j in 0..<g.keys { weighted += probabilities[j] * dp[j] }
                    let qRow = q.data + (g.queryOffsets[b] + i) * qWidth + h * g.headDim
                    let dqRow = dq.data + (g.queryOffsets[b] + i) * qWidth + h * g.headDim
                    for j in 0..<g.keys {
                        guard probabilities[j] != 0 else { dScores[j] = 0; continue }
                        var d = probabilities[j] * (dp[j] - weighted)
                        if let softcap {
                            let t = tanh(dot(qRow, kBase + j * kWidth, g.headDim) * scale / softcap)
                            d *= 1 - t * t
                        }
                        dScores[j] = d * scale
                    }
                    for j in 0..<g.keys where dScores[j] != 0 {
                        axpy(dScores[j], kBase + j * kWidth, dqRow, g.headDim)
                        axpy(dScores[j], qRow, dkBase + j * kWidth, g.headDim)
                    }
                }
            }
        }
    }
    return (dq, dk)
}

/// Σⱼ pattern[b, h, i, j] · v[b, j, head(h)] for every query: [query rows, heads * headDim],
/// the heads side by side as HF's attention output projection reads them.
public func attendValues(pattern: Tensor, v: Tensor, geometry g: AttentionGeometry) -> Tensor {
    precondition(pattern.shape == [g.batch, g.heads, g.queries, g.keys] && pattern.isContiguous,
                 "attention pattern shape \(pattern.shape) does not fit the geometry")
    checkRows(v, g.batch * g.keyStride, g.keyValueHeads * g.headDim, "values")
    let width = g.heads * g.headDim
    let output = Tensor(zeros: [g.queryRows, width])
    let groups = g.heads / g.keyValueHeads
    let vStride = v.strides[0]
    Parallel.forEachChunk(g.batch * g.heads, costPerItem: g.queries * g.keys * g.headDim) { pairs in
        for pair in pairs {
            let b = pair / g.heads, h = pair % g.heads
            let vBase = v.data + b * g.keyStride * vStride + (h / groups) * g.headDim
            for i in 0..<g.queryCounts[b] {
                let weights = pattern.data + ((b * g.heads + h) * g.queries + i) * g.keys
                let out = output.data + (g.queryOffsets[b] + i) * width + h * g.headDim
                for j in 0..<g.keys where weights[j] != 0 {
                    axpy(weights[j], vBase + j * vStride, out, g.headDim)
                }
            }
        }
    }
    GradientTape.record(output, from: [pattern, v]) { tape in
        let views = (pattern: GradientView(pattern), v: GradientView(v), output: GradientView(output))
        let saved = (pattern: tape.save(pattern), v: tape.save(v))
        return { gradients in
            guard let dOutput = gradients.of(views.output) else { return }
            let (dPattern, dv) = valuesBackward(dOutput, saved, g)
            gradients.add(dPattern, to: views.pattern)
            gradients.add(dv, to: views.v)
        }
    }
    return output
}

/// The gradients of `attendValues`' pattern (dP = dZ · vᵀ, for every key: the pattern is a
/// site, and a masked key's gradient there is not zero) and values (dv = Pᵀ · dZ).
private func valuesBackward(_ dOutput: Tensor, _ saved: (pattern: Tensor, v: Tensor), _ g: AttentionGeometry) -> (Tensor, Tensor) {
    let (p, v) = saved
    let dPattern = Tensor(zeros: p.shape), dv = Tensor(zeros: v.shape)
    let groups = g.heads / g.keyValueHeads
    let (width, vWidth) = (g.heads * g.headDim, v.columnCount)
    Parallel.forEachChunk(g.batch * g.keyValueHeads, costPerItem: groups * g.queries * g.keys * g.headDim) { pairs in
        for pair in pairs {
            let b = pair / g.keyValueHeads, kvHead = pair % g.keyValueHeads
            let vBase = v.data + b * g.keyStride * vWidth + kvHead * g.headDim
            let dvBase = dv.data + b * g.keyStride * vWidth + kvHead * g.headDim
            for h in (kvHead * groups)..<((kvHead + 1) * groups) {
                for i in 0..<g.queryCounts[b] {
                    let row = ((b * g.heads + h) * g.queries + i) * g.keys
                    let dz = dOutput.data + (g.queryOffsets[b] + i) * width + h * g.headDim
                    for j in 0..<g.keys {
                        dPattern.data[row + j] = dot(dz, vBase + j * vWidth, g.headDim)
                        if p.data[row + j] != 0 { axpy(p.data[row + j], dz, dvBase + j * vWidth, g.headDim) }
                    }
                }
            }
        }
    }
    return (dPattern, dv)
}

private func checkRows(_ t: Tensor, _ rows: Int, _ columns: Int, _ what: String) {
    precondition(t.rank == 2 && t.shape == [rows, columns] && t.strides[1] == 1,
                 "attention \(what): expected rows of [\(rows), \(columns)] with unit column stride, got \(t.shape) strides \(t.strides)")
}

/// Σ a[i]·b[i] with eight lanes.
@inline(__always)
func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var lanes = SIMD8<Float>()
    var i = 0
    while i + 8 <= n {
        let x = UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
        let y = UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        lanes += x * y  // not addProduct: without FMA in the target it becomes a libm call per lane
        i += 8
    }
    var sum = lanes.sum()
    while i < n {
        sum += a[i] * b[i]
        i += 1
    }
    return sum
}

/// y += alpha · x.
@inline(__always)
func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    let a = SIMD8<Float>(repeating: alpha)
    while i + 8 <= n {
        let xs = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        var ys = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
        ys += a * xs
        UnsafeMutableRawPointer(y + i).storeBytes(of: ys, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n {
        y[i] += alpha * x[i]
        i += 1
    }
}
