import CBLAS
import Foundation
import Synchronization

// The numerical kernels of both architectures. Each takes contiguous row-major tensors
// (a tensor is seen as rows of its last dimension) and returns a new tensor unless its
// name says it works in place. Reductions accumulate in Double so that results do not
// depend on how rows are split between cores.

// MARK: - Matrix products

/// How a weight matrix is stored.
public enum WeightLayout: Sendable {
    /// [in, out]: y = x W (GPT-2's Conv1D).
    case inputMajor
    /// [out, in]: y = x Wᵀ (torch.nn.Linear).
    case outputMajor
}

/// A linear map with an optional bias, applied with one sgemm over all rows, or, for few rows
/// of a matrix that came from quantized blocks, with the fused quantized product on them.
public struct Linear: Sendable {
    public let weight: Tensor
    public let bias: Tensor?
    public let layout: WeightLayout
    /// The blocks `weight` was dequantized from, [out, in] whatever `layout` (they equal it
    /// weight for weight); nil for a matrix stored as floats.
    public let blocks: QuantizedMatrix?

    public init(weight: Tensor, bias: Tensor? = nil, layout: WeightLayout, blocks: QuantizedMatrix? = nil) {
        precondition(weight.rank == 2 && weight.isContiguous, "a linear weight is a contiguous matrix")
        self.weight = weight
        self.bias = bias
        self.layout = layout
        self.blocks = blocks
        precondition(blocks.map { [$0.rows, $0.columns] == [outputSize, inputSize] } ?? true, "blocks of another shape than \(weight.shape)")
    }

    public var inputSize: Int { layout == .inputMajor ? weight.shape[0] : weight.shape[1] }
    public var outputSize: Int { layout == .inputMajor ? weight.shape[1] : weight.shape[0] }

    /// Whether products on few rows read quantized blocks where a matrix has them (on unless
    /// the environment sets LOUPE_QUANTIZED_PRODUCTS=0). Off, models also keep no blocks.
    public static var quantizedProducts: Bool {
        get { quantizedSwitch.load(ordering: .relaxed) }
        set { quantizedSwitch.store(newValue, ordering: .relaxed) }
    }
    private static let quantizedSwitch = Atomic<Bool>(ProcessInfo.processInfo.environment["LOUPE_QUANTIZED_PRODUCTS"] != "0")

    /// Inputs of at most this many rows take the quantized product. It reads a sixth of
    /// sgemm's bytes (Q4_1) and decodes each weight once per four rows: on SmolLM2's products
    /// it took 0.4x sgemm's wall time on one to four rows, 0.5x on eight and 1.2x on sixteen
    /// (`loupe-bench --quantized`).
    public static let quantizedRowLimit = 8

    /// Several maps of the same input as one, in input-major layout: one sgemm computes
    /// all of them side by side (Llama's q, k and v; its gate and up projections). sgemm
    /// streams an input-major weight faster when few rows go through it, so output-major
    /// weights are transposed here, once, at load. Blocks, when every part has them, are
    /// stacked (they stay output-major).
    public static func fused(_ parts: [Linear]) -> Linear {
        let inputs = parts[0].inputSize
        precondition(parts.allSatisfy { $0.inputSize == inputs }, "fused maps must share their input")
        let outputs = parts.map(\.outputSize).reduce(0, +)
        let weight = Tensor(zeros: [inputs, outputs])
        let hasBias = parts.contains { $0.bias != nil }
        let bias = hasBias ? Tensor(zeros: [outputs]) : nil
        var column = 0
        for part in parts {
            let target = weight.slice(axis: 1, column..<(column + part.outputSize))
            switch part.layout {
            case .inputMajor: target.assign(from: part.weight)
            case .outputMajor: transposeCopy(part.weight, into: target)
            }
            if let bias, let partBias = part.bias {
                (bias.data + column).update(from: partBias.data, count: part.outputSize)
            }
            column += part.outputSize
        }
        let blocks = parts.allSatisfy { $0.blocks != nil } ? QuantizedMatrix.stacked(parts.map { $0.blocks! }) : nil
        return Linear(weight: weight, bias: bias, layout: .inputMajor, blocks: blocks)
    }

    /// The same map with an input-major weight (see `fused`).
    public func inputMajor() -> Linear { layout == .inputMajor ? self : Linear.fused([self]) }

    /// x [..., in] → [..., out].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        precondition(x.columnCount == inputSize, "linear layer takes \(inputSize) features, got \(x.shape)")
        let input = x.contiguous()
        let rows = input.rowCount
        var shape = input.shape
        shape[shape.count - 1] = outputSize
        let output = Tensor(zeros: shape)
        if let blocks, rows <= Self.quantizedRowLimit, Self.quantizedProducts {
            blocks.multiply(input.data, count: rows, into: output.data)
            if let bias {
                for row in 0..<rows {
                    let out = output.data + row * outputSize
                    for o in 0..<outputSize { out[o] += bias.data[o] }
                }
            }
        } else {
            if let bias {
                for row in 0..<rows { (output.data + row * outputSize).update(from: bias.data, count: outputSize) }
            }
            gemm(rows: rows, columns: outputSize, inner: inputSize,
                 a: input.data, lda: inputSize, transposeA: false,
                 b: weight.data, ldb: weight.shape[1], transposeB: layout == .outputMajor,
                 c: output.data, ldc: outputSize, accumulate: bias != nil)
        }
        // Either way the backward uses the float32 matrix.
        GradientTape.record(output, from: [x]) { _ in
            let (into, from) = (GradientView(x), GradientView(output))
            return { g in
                guard let dy = g.of(from) else { return }
                g.accumulate(into) { dx in  // dx += dy · Wᵀ (the map's transpose)
                    gemm(rows: rows, columns: inputSize, inner: outputSize, a: dy.data, lda: outputSize, transposeA: false,
                         b: weight.data, ldb: weight.shape[1], transposeB: layout == .inputMajor,
                         c: dx.data, ldc: inputSize, accumulate: true)
                }
            }
        }
        return output
    }
}

/// C[rows, columns] (+)= op(A) op(B), row-major, single precision, on OpenBLAS.
@inline(__always)
public func gemm(rows: Int, columns: Int, inner: Int,
                 a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
                 b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
                 c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false) {
    guard rows > 0, columns > 0 else { return }
    cblas_sgemm(CblasRowMajor,
                transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                Int32(rows), Int32(columns), Int32(inner),
                1, a, Int32(lda), b, Int32(ldb),
                accumulate ? 1 : 0, c, Int32(ldc))
}

/// a [..., m, k] @ b [k, n] or batched [..., m, k] @ [..., k, n] with equal leading dims.
public func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.rank >= 2 && b.rank >= 2, "matmul needs matrices, got \(a.shape) and \(b.shape)")
    let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1], n = b.shape[b.rank - 1]
    precondition(b.shape[b.rank - 2] == k, "matmul inner dimensions differ: \(a.shape) @ \(b.shape)")
    let lhs = a.contiguous(), rhs = b.contiguous()
    let batchShape = Array(a.shape.dropLast(2))
    let batches = batchShape.reduce(1, *)
    precondition(b.rank == 2 || Array(b.shape.dropLast(2)) == batchShape, "matmul batch dims differ: \(a.shape) @ \(b.shape)")
    let output = Tensor(zeros: batchShape + [m, n])
    for batch in 0..<batches {
        let rhsOffset = b.rank == 2 ? 0 : batch * k * n
        gemm(rows: m, columns: n, inner: k, a: lhs.data + batch * m * k, lda: k, transposeA: false,
             b: rhs.data + rhsOffset, ldb: n, transposeB: false, c: output.data + batch * m * n, ldc: n)
    }
    return output
}

/// Writes the transpose of the matrix `source` [r, c] into `target` [c, r] (which may be a
/// column slice of a wider matrix), in cache-sized tiles on all cores.
public func transposeCopy(_ source: Tensor, into target: Tensor) {
    precondition(source.rank == 2 && target.shape == [source.shape[1], source.shape[0]] && target.strides[1] == 1,
                 "cannot transpose \(source.shape) into \(target.shape)")
    let input = source.contiguous()
    let (rows, columns) = (input.shape[0], input.shape[1])
    let targetStride = target.strides[0]
    let tile = 64
    let rowTiles = (rows + tile - 1) / tile
    Parallel.forEachChunk(rowTiles, costPerItem: tile * columns) { tiles in
        for rowTile in tiles {
            let r0 = rowTile * tile, r1 = min(r0 + tile, rows)
            var c0 = 0
            while c0 < columns {
                let c1 = min(c0 + tile, columns)
                for r in r0..<r1 {
                    let from = input.data + r * columns
                    for c in c0..<c1 { target.data[c * targetStride + r] = from[c] }
                }
                c0 = c1
            }
        }
    }
}

// MARK: - Embeddings

/// The index of the first NaN or infinity in contiguous `x`, nil when every element is finite.
/// Fast in any build: OpenBLAS's dot product of x with itself is finite exactly when every
/// element is, except for elements past 1.8e19 whose square overflows; only then (or on a real
/// hit) are the elements looked at one by one.
public func firstNonFinite(_ x: Tensor) -> Int? {
    precondition(x.isContiguous)
    let chunk = Int(Int32.max)
    var start = 0
    while start < x.count {
        let n = min(chunk, x.count - start)
        let p = x.data + start
        if !cblas_sdot(Int32(n), p, 1, p, 1).isFinite, let bad = (0..<n).first(where: { !p[$0].isFinite }) {
            return start + bad
        }
        start += n
    }
    return nil
}

/// Rows of `table` [vocab, dim] picked by `ids`: [ids.count, dim]. Under a recording tape the rows are where the activations, and their gradients, begin.
public func embeddingLookup(_ table: Tensor, _ ids: [Int]) -> Tensor {
    let dim = table.columnCount
    let output = Tensor(zeros: [ids.count, dim])
    for (row, id) in ids.enumerated() {
        (output.data + row * dim).update(from: table.data + id * dim, count: dim)
    }
    GradientTape.current?.track(output)
    return output
}

// MARK: - Norms

/// torch.nn.LayerNorm over the last dimension (biased variance, eps inside the root).
public func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, eps: Float) -> Tensor {
    normalizeRows(x, meanFree: true, weight: weight, eps: eps) { row, out, n in
        let (mean, inverse) = layerNormStatistics(row, n, eps)
        for i in 0..<n { out[i] = (row[i] - mean) * inverse * weight.data[i] + bias.data[i] }
    }
}

/// HF's LlamaRMSNorm: x / sqrt(mean(x²) + eps) * weight.
public func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor {
    normalizeRows(x, meanFree: false, weight: weight, eps: eps) { row, out, n in
        let inverse = rmsInverse(row, n, eps)
        for i in 0..<n { out[i] = weight.data[i] * (row[i] * inverse) }
    }
}

@inline(__always)
private func layerNormStatistics(_ row: UnsafePointer<Float>, _ n: Int, _ eps: Float) -> (mean: Float, inverse: Float) {
    var sum = 0.0, squares = 0.0
    for i in 0..<n { sum += Double(row[i]) }
    let mean = sum / Double(n)
    for i in 0..<n { let d = Double(row[i]) - mean; squares += d * d }
    return (Float(mean), Float(1 / (squares / Double(n) + Double(eps)).squareRoot()))
}

@inline(__always)
private func rmsInverse(_ row: UnsafePointer<Float>, _ n: Int, _ eps: Float) -> Float {
    var squares = 0.0
    for i in 0..<n { squares += Double(row[i]) * Double(row[i]) }
    return Float(1 / (squares / Double(n) + Double(eps)).squareRoot())
}

/// Normalizes each row with `body`. Its backward, with x̂ the normalized row, r the inverse
/// root and w the weight: dx = r·(w·dy − [mean(w·dy)] − x̂·mean(w·dy·x̂)), the bracket only
/// for LayerNorm (`meanFree`), where x̂ = (x − mean)·r; for RMSNorm x̂ = x·r.
private func normalizeRows(_ x: Tensor, meanFree: Bool, weight: Tensor, eps: Float,
                           _ body: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
    let input = x.contiguous()
    let n = input.columnCount
    let output = Tensor(zeros: input.shape)
    Parallel.forEachChunk(input.rowCount, costPerItem: n * 4) { rows in
        for row in rows { body(input.data + row * n, output.data + row * n, n) }
    }
    GradientTape.record(output, from: [x]) { tape in
        let (into, from, saved) = (GradientView(x), GradientView(output), tape.save(input))
        return { g in
            guard let dy = g.of(from) else { return }
            let dx = Tensor(zeros: saved.shape)
            Parallel.forEachChunk(saved.rowCount, costPerItem: n * 8) { rows in
                for row in rows {
                    let xs = saved.data + row * n, d = dy.data + row * n, out = dx.data + row * n
                    let (mean, inverse) = meanFree ? layerNormStatistics(xs, n, eps) : (0, rmsInverse(xs, n, eps))
                    var weighted = 0.0, projected = 0.0
                    for i in 0..<n {
                        let wd = Double(weight.data[i] * d[i])
                        weighted += wd
                        projected += wd * Double((xs[i] - mean) * inverse)
                    }
                    let meanWeighted = meanFree ? Float(weighted / Double(n)) : 0
                    let meanProjected = Float(projected / Double(n))
                    for i in 0..<n {
                        out[i] = inverse * (weight.data[i] * d[i] - meanWeighted - (xs[i] - mean) * inverse * meanProjected)
                    }
                }
            }
            g.add(dx, to: into)
        }
    }
    return output
}

// MARK: - Element-wise

/// An MLP's element-wise nonlinearity, vectorised.
public enum Activation: Sendable {
    /// x · sigmoid(x) (Llama's SiLU).
    case silu
    /// The tanh approximation of GELU (GPT-2's `gelu_new`, Gemma's `gelu_pytorch_tanh`).
    case geluTanh

    // Past e^80 the quotients below are v · 1e-35, zero for every purpose, so the exponent is
    // capped to stay off exp's slow overflow path.
    private static let cap = SIMD8<Float>(repeating: 80)
    private static let geluScale = Float((2.0 / Double.pi).squareRoot())

    @inline(__always)
    func callAsFunction(_ v: SIMD8<Float>) -> SIMD8<Float> {
        switch self {
        case .silu:
            return v / (1 + exp(pointwiseMin(-v, Self.cap)))
        case .geluTanh:
            // 0.5·(1 + tanh(u)) = 1 / (1 + e^(-2u)): one vectorised exp instead of a scalar tanh.
            return v / (1 + exp(pointwiseMin(-2 * Self.geluScale * (v + 0.044715 * v * v * v), Self.cap)))
        }
    }

    /// (activation, d activation / dx) at x, for the backward: one exponential or tanh each.
    func valueAndDerivative(_ x: Float) -> (value: Float, derivative: Float) {
        switch self {
        case .silu:
            let s = 1 / (1 + Foundation.exp(-x))
            return (x * s, s * (1 + x * (1 - s)))
        case .geluTanh:
            let t = Foundation.tanh(Self.geluScale * (x + 0.044715 * x * x * x))
            return (0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * Self.geluScale * (1 + 3 * 0.044715 * x * x))
        }
    }
}

/// Records an element-wise in-place op on `x` whose derivative at each element depends only
/// on the element's value before the op: dx = dy · derivative(old x).
private func recordPointwise(_ x: Tensor, _ derivative: @escaping (Float) -> Float) {
    GradientTape.record(x, from: [x]) { tape in
        let (view, old) = (GradientView(x), tape.save(x))
        return { g in
            guard let dy = g.of(view) else { return }
            Parallel.forEachChunk(old.count, costPerItem: 16) { range in
                for i in range { dy.data[i] *= derivative(old.data[i]) }
            }
        }
    }
}

/// GPT-2's GELU (the tanh approximation, HF's NewGELUActivation), in place.
public func geluTanhInPlace(_ x: Tensor) {
    precondition(x.isContiguous)
    recordPointwise(x) { Activation.geluTanh.valueAndDerivative($0).derivative }
    let p = x.data
    Parallel.forEachChunk(x.count, costPerItem: 4) { range in
        mapVectors(p + range.lowerBound, p + range.lowerBound, count: range.count) { Activation.geluTanh($0) }
    }
}

/// HF's `GELUActivation` (`hidden_act` "gelu", torch's default GELU): x · Φ(x) with the exact
/// error function, 0.5 · x · (1 + erf(x / √2)), in place.
public func geluErfInPlace(_ x: Tensor) {
    precondition(x.isContiguous)
    let scale = Float(0.5.squareRoot())
    recordPointwise(x) { v in  // Φ(x) + x·φ(x)
        0.5 * (1 + erf(v * scale)) + v * Foundation.exp(-0.5 * v * v) / Float((2 * Double.pi).squareRoot())
    }
    let p = x.data
    Parallel.forEachChunk(x.count, costPerItem: 16) { range in
        for i in range {
            let v = p[i]
            p[i] = 0.5 * v * (1 + erf(v * scale))
        }
    }
}

/// activation(gate) · up (a gated MLP: Llama's SiLU, Gemma's GELU) as a new [rows, width]
/// matrix, or activation(gate) alone when `up` is nil. Both operands may be column slices of
/// one wider matrix.
public func gated(_ activation: Activation, _ gate: Tensor, _ up: Tensor?) -> Tensor {
    let output = Tensor(zeros: [gate.rowCount, gate.columnCount])
    let width = gate.columnCount
    let (g, gStride) = rowMajorView(gate)
    let (u, uStride) = up.map(rowMajorView) ?? (g, gStride)
    precondition(up == nil || up!.shape == gate.shape, "gate \(gate.shape) and up \(up!.shape) differ")
    Parallel.forEachChunk(gate.rowCount, costPerItem: width * 4) { rows in
        for row in rows {
            let gRow = g + row * gStride, uRow = u + row * uStride, out = output.data + row * width
            mapVectors(gRow, out, count: width) { activation($0) }
            if up != nil {
                for i in 0..<width { out[i] *= uRow[i] }
            }
        }
    }
    GradientTape.record(output, from: [gate] + (up.map { [$0] } ?? [])) { tape in
        let (from, gateView, upView) = (GradientView(output), GradientView(gate), up.map(GradientView.init))
        let (savedGate, savedUp) = (tape.save(gate), up.map(tape.save))
        return { g in
            guard let dy = g.of(from) else { return }
            let dGate = Tensor(zeros: savedGate.shape), dUp = Tensor(zeros: savedGate.shape)
            let (d, x, u) = (dy.contiguous().data, savedGate.data, savedUp?.data)
            Parallel.forEachChunk(savedGate.count, costPerItem: 16) { range in
                for i in range {
                    let (value, derivative) = activation.valueAndDerivative(x[i])
                    dGate.data[i] = d[i] * (u?[i] ?? 1) * derivative
                    dUp.data[i] = d[i] * value
                }
            }
            g.add(dGate, to: gateView)
            if let upView { g.add(dUp, to: upView) }
        }
    }
    return output
}

/// x = cap · tanh(x / cap), element-wise (Gemma 2's logit soft-capping), in place.
public func softcapInPlace(_ x: Tensor, _ cap: Float) {
    precondition(x.isContiguous && cap > 0)
    recordPointwise(x) { v in let t = tanh(v / cap); return 1 - t * t }
    let p = x.data
    Parallel.forEachChunk(x.count, costPerItem: 8) { range in
        for i in range { p[i] = tanh(p[i] / cap) * cap }
    }
}

/// x *= y, element-wise; `y` may be a column slice of a wider matrix.
public func multiplyInPlace(_ x: Tensor, _ y: Tensor) {
    precondition(x.isContiguous && x.count == y.count, "multiply: \(x.shape) and \(y.shape)")
    GradientTape.record(x, from: [x, y]) { tape in
        let (xView, yView, oldX, savedY) = (GradientView(x), GradientView(y), tape.save(x), tape.save(y))
        return { g in
            guard let dz = g.of(xView) else { return }
            let dy = Tensor(zeros: savedY.shape)
            for i in 0..<dz.count {
                dy.data[i] = dz.data[i] * oldX.data[i]
                dz.data[i] *= savedY.data[i]
            }
            g.add(dy, to: yView)
        }
    }
    let width = x.columnCount
    let (b, bStride) = rowMajorView(y)
    Parallel.forEachChunk(x.rowCount, costPerItem: width) { rows in
        for row in rows {
            let a = x.data + row * width, bRow = b + row * bStride
            for i in 0..<width { a[i] *= bRow[i] }
        }
    }
}

/// The first element and the row stride of a matrix whose rows are contiguous.
private func rowMajorView(_ t: Tensor) -> (UnsafeMutablePointer<Float>, Int) {
    if t.isContiguous { return (t.data, t.columnCount) }
    precondition(t.rank == 2 && t.strides[1] == 1, "expected rows of contiguous elements, got strides \(t.strides)")
    return (t.data, t.strides[0])
}

/// x += y, element-wise (the residual connection).
public func addInPlace(_ x: Tensor, _ y: Tensor) {
    precondition(x.isContiguous && y.isContiguous && x.count == y.count, "add: \(x.shape) and \(y.shape)")
    GradientTape.record(x, from: [x, y]) { _ in
        let (xView, yView) = (GradientView(x), GradientView(y))
        return { g in
            guard let dz = g.of(xView) else { return }
            g.add(dz.reshaped(yView.shape), to: yView)
        }
    }
    let a = x.data, b = y.data
    Parallel.forEachChunk(x.count) { range in
        for i in range { a[i] += b[i] }
    }
}

/// x *= scale, element-wise, in place (Gemma's embedding scale).
public func scaleInPlace(_ x: Tensor, _ scale: Float) {
    precondition(x.isContiguous)
    GradientTape.record(x, from: [x]) { _ in
        let view = GradientView(x)
        return { g in
            guard let dy = g.of(view) else { return }
            for i in 0..<dy.count { dy.data[i] *= scale }
        }
    }
    let p = x.data
    for i in 0..<x.count { p[i] *= scale }
}

/// Softmax over the last dimension, in place.
public func softmaxInPlace(_ x: Tensor) {
    precondition(x.isContiguous)
    let n = x.columnCount
    Parallel.forEachChunk(x.rowCount, costPerItem: n * 8) { rows in
        for row in rows { softmaxRow(x.data + row * n, n) }
    }
}

@inline(__always)
func softmaxRow(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
    var maximum = -Float.infinity
    for i in 0..<n where p[i] > maximum { maximum = p[i] }
    if maximum == -.infinity {  // a fully masked row: no key may be attended
        p.update(repeating: 0, count: n)
        return
    }
    mapVectors(p, p, count: n) { exp($0 - maximum) }
    // Summed in order, one by one: masked keys add exact zeros wherever the row's padding
    // ends, so a row sums the same alone and in a padded batch.
    var sum: Float = 0
    for i in 0..<n { sum += p[i] }
    let inverse = 1 / sum
    for i in 0..<n { p[i] *= inverse }
}

// MARK: - Rotary position embedding

/// cos and sin tables for HF's rotate-half RoPE: for each position p and i < dim/2,
/// angle = p * theta^(-2i/dim), laid out [positions, dim/2] (HF repeats the half; both
/// halves of a head read the same entries).
public struct RotaryTable: Sendable {
    public let dim: Int
    public let cos: [Float]
    public let sin: [Float]

    public init(dim: Int, theta: Double, positions: Int) {
        self.init(dim: dim, inverseFrequency: Self.inverseFrequencies(dim: dim, theta: theta), positions: positions)
    }

    /// θ^(-2i/dim) for i < dim/2: the unscaled rotary frequencies.
    public static func inverseFrequencies(dim: Int, theta: Double) -> [Float] {
        // HF computes inverse frequencies and angles in float32; so do we, for the same numbers.
        (0..<dim / 2).map { i in Float(1) / Float(pow(theta, Double(2 * i) / Double(dim))) }
    }

    /// The table for given inverse frequencies (dim/2 of them), e.g. rescaled ones (Llama 3's RoPE scaling).
    public init(dim: Int, inverseFrequency: [Float], positions: Int) {
        precondition(inverseFrequency.count == dim / 2)
        self.dim = dim
        let half = dim / 2
        var cos = [Float](repeating: 0, count: positions * half)
        var sin = [Float](repeating: 0, count: positions * half)
        for p in 0..<positions {
            for i in 0..<half {
                let angle = Float(p) * inverseFrequency[i]
                cos[p * half + i] = Foundation.cos(angle)
                sin[p * half + i] = Foundation.sin(angle)
            }
        }
        self.cos = cos
        self.sin = sin
    }

    /// Rotates each head of `x` [rows, heads * dim] in place; row r sits at `positions[r]`.
    /// `x` may be a column slice of a wider matrix (Llama's fused q, k, v).
    public func apply(_ x: Tensor, heads: Int, positions: [Int]) {
        rotate(x, heads: heads, positions: positions, backwards: false)
        // A rotation's gradient turns back by the same angle.
        GradientTape.record(x, from: [x]) { _ in
            let view = GradientView(x)
            return { g in
                guard let dy = g.of(view) else { return }
                self.rotate(dy, heads: heads, positions: positions, backwards: true)
            }
        }
    }

    /// Turns each pair (x[i], x[i + dim/2]) of every head by its position's angle, or back by it.
    private func rotate(_ x: Tensor, heads: Int, positions: [Int], backwards: Bool) {
        precondition(x.rank == 2 && x.strides[1] == 1 && x.columnCount == heads * dim && positions.count == x.rowCount)
        let half = dim / 2, width = x.columnCount, rowStride = x.strides[0]
        let sign: Float = backwards ? -1 : 1
        cos.withUnsafeBufferPointer { cosTable in
            sin.withUnsafeBufferPointer { sinTable in
                Parallel.forEachChunk(x.rowCount, costPerItem: width * 4) { rows in
                    for row in rows {
                        let c = cosTable.baseAddress! + positions[row] * half
                        let s = sinTable.baseAddress! + positions[row] * half
                        for head in 0..<heads {
                            let v = x.data + row * rowStride + head * dim
                            for i in 0..<half {
                                let a = v[i], b = v[i + half], turn = sign * s[i]
                                v[i] = a * c[i] - b * turn
                                v[i + half] = b * c[i] + a * turn
                            }
                        }
                    }
                }
            }
        }
    }
}
