import Foundation
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Each kernel against a plain, obviously-correct loop in Double.
final class KernelTests: XCTestCase {
    private var generator = SeededGenerator(seed: 7)

    private func random(_ shape: [Int], scale: Float = 1) -> Tensor {
        let count = shape.reduce(1, *)
        return Tensor(shape: shape, values: (0..<count).map { _ in Float.random(in: -scale...scale, using: &generator) })
    }

    private func assertClose(_ a: [Float], _ b: [Double], _ tolerance: Double = 1e-5, _ what: String = "",
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        let worst = zip(a, b).map { abs(Double($0) - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, tolerance, "\(what) max difference \(worst)", file: file, line: line)
    }

    func testViewsShareStorageAndCopyOnlyWhenNeeded() {
        let t = Tensor(shape: [2, 3], values: [0, 1, 2, 3, 4, 5])
        let transposed = t.transposed(0, 1)
        XCTAssertEqual(transposed.shape, [3, 2])
        XCTAssertEqual(transposed.toArray(), [0, 3, 1, 4, 2, 5])
        XCTAssertFalse(transposed.isContiguous)
        let column = t.slice(axis: 1, 1..<2)
        column.fill(9)
        XCTAssertEqual(t.toArray(), [0, 9, 2, 3, 9, 5], "a slice writes through to its storage")
        XCTAssertEqual(t.reshaped([3, -1]).shape, [3, 2])
        XCTAssertTrue(t.reshaped([6]).storage === t.storage, "reshaping a contiguous tensor copies nothing")
        XCTAssertEqual(t.select(axis: 0, 1).toArray(), [3, 9, 5])
        let permuted = Tensor(shape: [2, 3, 4], values: (0..<24).map(Float.init)).permuted([2, 0, 1])
        XCTAssertEqual(permuted.shape, [4, 2, 3])
        XCTAssertEqual(permuted[1, 1, 2], Float(1 * 12 + 2 * 4 + 1))
    }

    func testLinearBothLayoutsMatchNaiveProduct() {
        let x = random([5, 7]), w = random([7, 3]), b = random([3])
        let expected = (0..<5).flatMap { i in
            (0..<3).map { j in (0..<7).reduce(Double(b[j])) { $0 + Double(x[i, $1]) * Double(w[$1, j]) } }
        }
        assertClose(Linear(weight: w, bias: b, layout: .inputMajor)(x).toArray(), expected, 1e-5, "inputMajor")
        let wT = w.transposed(0, 1).contiguous()
        assertClose(Linear(weight: wT, bias: b, layout: .outputMajor)(x).toArray(), expected, 1e-5, "outputMajor")
        // Many rows and one row agree row by row, up to the order in which sgemm's kernels
        // for the two sizes add.
        let big = random([300, 7])
        let whole = Linear(weight: w, layout: .inputMajor)(big)
        let row = Linear(weight: w, layout: .inputMajor)(big.slice(axis: 0, 123..<124).contiguous())
        assertClose(whole.select(axis: 0, 123).toArray(), row.toArray().map(Double.init), 1e-6, "row in a batch vs alone")
    }

    func testBatchedMatmul() {
        let a = random([2, 3, 4]), b = random([2, 4, 5])
        let c = matmul(a, b)
        XCTAssertEqual(c.shape, [2, 3, 5])
        for n in 0..<2 {
            let expected = (0..<3).flatMap { i in (0..<5).map { j in (0..<4).reduce(0.0) { $0 + Double(a[n, i, $1]) * Double(b[n, $1, j]) } } }
            assertClose(c.select(axis: 0, n).toArray(), expected)
        }
    }

    func testLayerNormAndRMSNorm() {
        let x = random([70, 33], scale: 3), w = random([33]), b = random([33])
        var expectedLN = [Double](), expectedRMS = [Double]()
        for r in 0..<70 {
            let row = (0..<33).map { Double(x[r, $0]) }
            let mean = row.reduce(0, +) / 33
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 33
            let meanSquare = row.map { $0 * $0 }.reduce(0, +) / 33
            for i in 0..<33 {
                expectedLN.append((row[i] - mean) / (variance + 1e-5).squareRoot() * Double(w[i]) + Double(b[i]))
                expectedRMS.append(row[i] / (meanSquare + 1e-6).squareRoot() * Double(w[i]))
            }
        }
        assertClose(layerNorm(x, weight: w, bias: b, eps: 1e-5).toArray(), expectedLN, 1e-5, "layerNorm")
        assertClose(rmsNorm(x, weight: w, eps: 1e-6).toArray(), expectedRMS, 1e-5, "rmsNorm")
    }

    func testActivations() {
        let x = random([50_000], scale: 6)
        let values = x.toArray().map(Double.init)
        let gelu = x.copy()
        geluTanhInPlace(gelu)
        let c = (2 / Double.pi).squareRoot()
        assertClose(gelu.toArray(), values.map { 0.5 * $0 * (1 + tanh(c * ($0 + 0.044715 * $0 * $0 * $0))) }, 1e-5, "gelu")
        assertClose(gated(.silu, x.reshaped([500, 100]), nil).toArray(), values.map { $0 / (1 + exp(-$0)) }, 1e-5, "silu")
        // Gate and up as the two halves of one matrix, as Llama's fused projection makes them.
        let up = random([50_000])
        let both = Tensor(zeros: [500, 200])
        both.slice(axis: 1, 0..<100).assign(from: x.reshaped([500, 100]))
        both.slice(axis: 1, 100..<200).assign(from: up.reshaped([500, 100]))
        let siluProduct = gated(.silu, both.slice(axis: 1, 0..<100), both.slice(axis: 1, 100..<200))
        let expected = zip(values, up.toArray()).map { $0 / (1 + exp(-$0)) * Double($1) }
        assertClose(siluProduct.toArray(), expected, 1e-5, "silu * up")
        let geluProduct = gated(.geluTanh, both.slice(axis: 1, 0..<100), both.slice(axis: 1, 100..<200))
        assertClose(geluProduct.toArray(), zip(values, up.toArray()).map { 0.5 * $0 * (1 + tanh(c * ($0 + 0.044715 * $0 * $0 * $0))) * Double($1) },
                    1e-5, "gelu * up")
        let product = gated(.silu, both.slice(axis: 1, 0..<100), nil)
        multiplyInPlace(product, both.slice(axis: 1, 100..<200))
        assertClose(product.toArray(), expected, 1e-5, "silu then * up")
    }

    /// The vectorised exp behind GELU, SiLU and softmax at the edges of float32: masked keys
    /// get exactly zero weight, NaN stays NaN (an injected NaN must not turn into a number),
    /// tiny and huge arguments match libm.
    func testActivationsAtTheEdgesOfFloat32() {
        let row = Tensor(shape: [1, 11], values: [0, -.infinity, -100, -87.5, -87.2, -20, 3, -.infinity, 0.5, -95, 1])
        let expected: [Double] = {
            let v = row.toArray().map(Double.init)
            let e = v.map { exp($0 - 3) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }()
        softmaxInPlace(row)
        XCTAssertEqual(row[0, 1], 0)
        XCTAssertEqual(row[0, 7], 0)
        assertClose(row.toArray(), expected, 1e-7, "softmax across float32's range")
        let withNaN = Tensor(shape: [1, 9], values: [0, 1, 2, .nan, 4, 5, 6, 7, 8])
        softmaxInPlace(withNaN)
        XCTAssertTrue(withNaN.toArray().contains { $0.isNaN }, "a NaN score must not vanish")
        let extremes: [Float] = [-1e4, -200, -100, -30, 30, 100, 200, 1e4, .nan]
        let gelu = Tensor(shape: [extremes.count], values: extremes)
        geluTanhInPlace(gelu)
        let silu = gated(.silu, Tensor(shape: [1, extremes.count], values: extremes), nil)
        for (i, v) in extremes.enumerated() where !v.isNaN {
            XCTAssertEqual(Double(gelu[i]), v < 0 ? 0 : Double(v), accuracy: 1e-6 * max(1, Double(abs(v))), "gelu(\(v))")
            XCTAssertEqual(Double(silu[0, i]), Double(v) / (1 + exp(-Double(v))), accuracy: 1e-6 * max(1, Double(abs(v))), "silu(\(v))")
        }
        XCTAssertTrue(gelu[extremes.count - 1].isNaN && silu[0, extremes.count - 1].isNaN, "NaN in, NaN out")
    }

    func testTransposeAndFusedLinear() {
        let a = random([130, 70]), b = random([40, 70]), biasA = random([130])
        let x = random([9, 70])
        let fused = Linear.fused([Linear(weight: a, bias: biasA, layout: .outputMajor), Linear(weight: b, layout: .outputMajor)])
        XCTAssertEqual(fused.weight.shape, [70, 170])
        let y = fused(x)
        let ya = Linear(weight: a, bias: biasA, layout: .outputMajor)(x), yb = Linear(weight: b, layout: .outputMajor)(x)
        let expected = (0..<9).flatMap { r in ya.select(axis: 0, r).toArray() + yb.select(axis: 0, r).toArray() }.map(Double.init)
        assertClose(y.toArray(), expected, 1e-5, "fused")
        let t = Tensor(zeros: [70, 130])
        transposeCopy(a, into: t)
        XCTAssertEqual(t.toArray(), a.transposed(0, 1).contiguous().toArray())
    }

    func testSoftmaxRowsSumToOne() {
        let x = random([9, 40], scale: 20)
        let expected = (0..<9).flatMap { r -> [Double] in
            let row = (0..<40).map { Double(x[r, $0]) }
            let m = row.max()!
            let e = row.map { exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
        softmaxInPlace(x)
        assertClose(x.toArray(), expected, 1e-6, "softmax")
    }

    func testRotaryMatchesRotateHalf() {
        let dim = 8, heads = 2
        let table = RotaryTable(dim: dim, theta: 10_000, positions: 10)
        let x = random([3, heads * dim])
        let original = x.copy()
        let positions = [0, 4, 9]
        table.apply(x, heads: heads, positions: positions)
        var expected = [Double]()
        for r in 0..<3 {
            for h in 0..<heads {
                let v = (0..<dim).map { Double(original[r, h * dim + $0]) }
                for i in 0..<dim {
                    let frequency = 1 / pow(10_000.0, Double(2 * (i % (dim / 2))) / Double(dim))
                    let angle = Double(positions[r]) * frequency
                    let rotated = i < dim / 2 ? -v[i + dim / 2] : v[i - dim / 2]
                    expected.append(v[i] * cos(angle) + rotated * sin(angle))
                }
            }
        }
        assertClose(x.toArray(), expected, 1e-5, "rope")
    }

    /// Grouped-query causal attention over a left-padded batch, and the same attention
    /// continued from cached keys (fewer queries than keys), against the definition.
    func testAttentionWithPaddingGroupsAndCache() {
        let (batch, keys, heads, kvHeads, headDim) = (2, 5, 4, 2, 8)
        let padding = [0, 2]
        let q = random([batch * keys, heads * headDim]), k = random([batch * keys, kvHeads * headDim])
        let v = random([batch * keys, kvHeads * headDim])
        let scale = 1 / Float(headDim).squareRoot()
        let full = AttentionGeometry(batch: batch, queries: keys, keys: keys, heads: heads, keyValueHeads: kvHeads, headDim: headDim, padding: padding)
        let pattern = attentionPattern(q: q, k: k, geometry: full, scale: scale)
        let z = attendValues(pattern: pattern, v: v, geometry: full)

        for b in 0..<batch {
            for h in 0..<heads {
                let kv = h / (heads / kvHeads)
                for i in padding[b]..<keys {
                    let allowed = Array(padding[b]...i)
                    let scores = allowed.map { j in (0..<headDim).reduce(0.0) { $0 + Double(q[b * keys + i, h * headDim + $1]) * Double(k[b * keys + j, kv * headDim + $1]) } * Double(scale) }
                    let m = scores.max()!
                    let e = scores.map { exp($0 - m) }
                    let p = e.map { $0 / e.reduce(0, +) }
                    for (n, j) in allowed.enumerated() { XCTAssertEqual(Double(pattern[b, h, i, j]), p[n], accuracy: 1e-6) }
                    for j in 0..<padding[b] { XCTAssertEqual(pattern[b, h, i, j], 0, "padding is never attended") }
                    let out = (0..<headDim).map { d in
                        allowed.enumerated().reduce(0.0) { sum, pair in sum + p[pair.offset] * Double(v[b * keys + pair.element, kv * headDim + d]) }
                    }
                    for d in 0..<headDim { XCTAssertEqual(Double(z[b * keys + i, h * headDim + d]), out[d], accuracy: 1e-5) }
                }
            }
        }

        // The last two queries alone, against all five cached keys, give the same rows.
        let queries = 2
        let lastQ = Tensor(zeros: [batch * queries, heads * headDim])
        for b in 0..<batch {
            for i in 0..<queries { lastQ.select(axis: 0, b * queries + i).assign(from: q.select(axis: 0, b * keys + keys - queries + i)) }
        }
        let partial = AttentionGeometry(batch: batch, queries: queries, keys: keys, heads: heads, keyValueHeads: kvHeads, headDim: headDim, padding: padding)
        let zPartial = attendValues(pattern: attentionPattern(q: lastQ, k: k, geometry: partial, scale: scale), v: v, geometry: partial)
        for b in 0..<batch {
            for i in 0..<queries {
                XCTAssertEqual(zPartial.select(axis: 0, b * queries + i).toArray(), z.select(axis: 0, b * keys + keys - queries + i).toArray())
            }
        }
    }
}
