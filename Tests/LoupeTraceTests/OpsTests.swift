import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// The trace language's ops on constants, against values numpy computes for the same
/// expressions (written out here).
final class OpsTests: XCTestCase {
    /// x = arange(24).reshape(2, 3, 4) / 4 - 2
    let x = Tensor(shape: [2, 3, 4], values: (0..<24).map { Float($0) / 4 - 2 })

    /// Runs `build` on a trace whose node 0 is the constant x, and returns what it saved.
    func run(_ build: (inout TraceBuilder, TraceValue) -> Void) throws -> TraceResult {
        var b = TraceBuilder()
        let c = b.add("constant", ["value": .tensor(x)])
        build(&b, c)
        return try Fixtures.shared.runner("gpt2-tiny").run(b.trace([[1, 2]]))
    }

    func assertValues(_ t: Tensor?, _ shape: [Int], _ values: [Float], _ what: String, accuracy: Float = 1e-5,
                      file: StaticString = #filePath, line: UInt = #line) {
        guard let t else { return XCTFail("\(what) missing", file: file, line: line) }
        XCTAssertEqual(t.shape, shape, what, file: file, line: line)
        let got = t.toArray()
        XCTAssertEqual(got.count, values.count, what, file: file, line: line)
        for (a, b) in zip(got, values) where abs(a - b) > accuracy {
            return XCTFail("\(what): \(got) != \(values)", file: file, line: line)
        }
    }

    func testIndexing() throws {
        let r = try run { b, c in
            b.save(b.index(c, ["...", nil, 1]), "newaxis")
            b.save(b.index(c, [1, all, [3, 0]]), "list")        // advanced indices split by a slice: the list's dim goes first
            b.save(b.index(c, [[1, 0], all, 2]), "list2")
            b.save(b.index(c, [all, ["slice": [nil, nil, 2]], -1]), "step")
            b.save(b.index(c, 1), "one")
            b.save(b.index(c, [[1, 0, 1], 2, [3, 0, 0]]), "lists")       // adjacent advanced items: in place (here first anyway)
            b.save(b.index(c, [all, [2, 0], [1]]), "lists2")
            b.save(b.index(c, [0, ["slice": [1]], ["slice": [-2, nil]]]), "bounds")
        }
        assertValues(r["newaxis"], [2, 3, 1], [-1.75, -0.75, 0.25, 1.25, 2.25, 3.25], "x[..., None, 1]")
        assertValues(r["list"], [2, 3], [1.75, 2.75, 3.75, 1.0, 2.0, 3.0], "x[1, :, [3, 0]]")
        assertValues(r["list2"], [2, 3], [1.5, 2.5, 3.5, -1.5, -0.5, 0.5], "x[[1, 0], :, 2]")
        assertValues(r["step"], [2, 2], [-1.25, 0.75, 1.75, 3.75], "x[:, ::2, -1]")
        assertValues(r["one"], [3, 4], Array(x.toArray()[12...]), "x[1]")
        assertValues(r["lists"], [3], [x[1, 2, 3], x[0, 2, 0], x[1, 2, 0]], "x[[1, 0, 1], 2, [3, 0, 0]]")
        assertValues(r["lists2"], [2, 2], [x[0, 2, 1], x[0, 0, 1], x[1, 2, 1], x[1, 0, 1]], "x[:, [2, 0], [1]]")
        assertValues(r["bounds"], [1, 2], [-1.5, -1.25], "x[0, :1, -2:]")
    }

    func testArithmeticAndBroadcasting() throws {
        let r = try run { b, c in
            let v = b.add("constant", ["value": [1, -1, 2, 0.5]])
            let prod = b.add("mul", ["x": b.index(c, [all, ["slice": [nil, 1]], all]), "y": v])
            b.save(b.add("sum", ["x": b.add("add", ["x": prod, "y": 1])]), "bcast")
            let p = b.add("pow", ["x": b.add("abs", ["x": c]), "y": 1.5])
            b.save(b.add("sum", ["x": p]), "pow")
            b.save(b.add("neg", ["x": b.div(b.index(c, [0, 0, ["slice": [nil, 2]]]), 2)]), "negdiv")
            b.save(b.add("exp", ["x": b.add("log", ["x": b.add("sqrt", ["x": b.add("full", ["shape": [2], "value": 9])])])]), "explog")
        }
        assertValues(r["bcast"], [], [7.75], "(x[:, :1] * v + 1).sum()")
        assertValues(r["pow"], [], [57.7655], "(|x| ** 1.5).sum()", accuracy: 1e-3)
        assertValues(r["negdiv"], [2], [1, 0.875], "-(x[0, 0, :2] / 2)")
        assertValues(r["explog"], [2], [3, 3], "exp(log(sqrt(9)))")
    }

    func testReductions() throws {
        let r = try run { b, c in
            b.save(b.add("sum", ["x": c, "dim": [0, 2]]), "sum")
            b.save(b.add("sum", ["x": c, "dim": 1, "keepdim": true]), "keep")
            b.save(b.add("mean", ["x": c]), "mean")
            b.save(b.add("max", ["x": c, "dim": -1]), "max")
            b.save(b.add("min", ["x": c, "dim": 0]), "min")
            b.save(b.add("argmax", ["x": c, "dim": 1]), "argmax")
            b.save(b.add("argmax", ["x": c]), "argmaxAll")
            b.save(b.index(b.add("softmax", ["x": c, "dim": 1]), [1, 2]), "softmax")
            b.save(b.index(b.add("log_softmax", ["x": c, "dim": 0]), [0, 0]), "logsoftmax")
            b.save(b.add("topk", ["x": b.index(c, 0), "k": 2]), "topk")
            b.save(b.add("topk", ["x": b.index(c, 0), "k": 2, "dim": 0, "largest": false, "indices": true]), "topkIndices")
        }
        assertValues(r["sum"], [3], [-1, 7, 15], "x.sum((0, 2))")
        XCTAssertEqual(r["keep"]?.shape, [2, 1, 4])
        assertValues(r["mean"], [], [0.875], "x.mean()")
        assertValues(r["max"], [2, 3], [-1.25, -0.25, 0.75, 1.75, 2.75, 3.75], "x.max(-1)")
        assertValues(r["min"], [3, 4], Array(x.toArray()[..<12]), "x.min(0)")
        assertValues(r["argmax"], [2, 4], Array(repeating: 2, count: 8), "x.argmax(1)")
        assertValues(r["argmaxAll"], [], [23], "x.argmax()")
        assertValues(r["softmax"], [4], Array(repeating: 0.66524094, count: 4), "softmax(x, 1)[1, 2]")
        assertValues(r["logsoftmax"], [4], Array(repeating: -3.0485873, count: 4), "log_softmax(x, 0)[0, 0]", accuracy: 1e-4)
        assertValues(r["topk"], [3, 2], [-1.25, -1.5, -0.25, -0.5, 0.75, 0.5], "x[0].topk(2)")
        assertValues(r["topkIndices"], [2, 4], [0, 0, 0, 0, 1, 1, 1, 1], "x[0].topk(2, dim=0, largest=False).indices")
    }

    func testMatmulAndShapes() throws {
        let r = try run { b, c in
            let y = b.add("constant", ["value": [[-3, -2], [-1, 0], [1, 2], [3, 4]]])
            b.save(b.index(b.add("matmul", ["x": c, "y": y]), 1), "matmul")
            b.save(b.add("matmul", ["x": c, "y": [1, -1, 2, 0.5]]), "matvec")
            b.save(b.add("reshape", ["x": c, "shape": [4, -1]]), "reshape")
            b.save(b.index(b.add("transpose", ["x": c, "dim0": 0, "dim1": 2]), [1, 2]), "transpose")
            b.save(b.add("permute", ["x": c, "dims": [2, 0, 1]]), "permute")
            let heads = b.add("split_heads", ["x": c, "heads": 2])
            b.save(b.index(heads, [0, 0, 1]), "head")
            b.save(b.add("merge_heads", ["x": heads]), "merged")
            b.save(b.add("cat", ["xs": [c, b.index(c, [all, ["slice": [nil, 1]]])], "dim": 1]), "cat")
            b.save(b.add("stack", ["xs": [b.index(c, 0), b.index(c, 1)], "dim": 2]), "stack")
            b.save(b.add("full_like", ["x": c, "value": 2]), "full")
            b.save(b.add("zeros_like", ["x": b.index(c, 0)]), "zeros")
        }
        assertValues(r["matmul"], [3, 2], [2.5, 8, 2.5, 12, 2.5, 16], "(x @ y)[1]")
        assertValues(r["matvec"], [2, 3], [-3.875, -1.375, 1.125, 3.625, 6.125, 8.625], "x @ v")
        assertValues(r["reshape"], [4, 6], x.toArray(), "x.reshape(4, -1)")
        XCTAssertEqual(r["transpose"]?.toArray(), [x[0, 2, 1], x[1, 2, 1]], "x.transpose(0, 2)[1, 2]")
        XCTAssertEqual(r["permute"]?.shape, [4, 2, 3])
        XCTAssertEqual(r["permute"]?[3, 1, 2], x[1, 2, 3])
        assertValues(r["head"], [2], [-1.5, -1.25], "split_heads(x, 2)[0, 0, 1]")
        assertValues(r["merged"], [2, 3, 4], x.toArray(), "merge_heads(split_heads(x))")
        XCTAssertEqual(r["cat"]?.shape, [2, 4, 4])
        XCTAssertEqual(r["cat"]?[1, 3, 2], x[1, 0, 2])
        XCTAssertEqual(r["stack"]?.shape, [3, 4, 2])
        XCTAssertEqual(r["stack"]?[2, 1, 1], x[1, 2, 1])
        assertValues(r["full"], [2, 3, 4], Array(repeating: 2, count: 24), "full_like")
        assertValues(r["zeros"], [3, 4], Array(repeating: 0, count: 12), "zeros_like")
    }

    /// Assignment writes through views, as in PyTorch: into a reshaped view, with a list,
    /// with broadcasting, and a clone is a copy.
    func testSetIndexThroughViews() throws {
        let r = try run { b, c in
            let y = b.add("clone", ["x": c])
            let untouched = b.add("clone", ["x": y])
            let heads = b.add("split_heads", ["x": y, "heads": 2])
            b.add("setindex", ["x": heads, "key": [all, all, 1], "value": 0])          // second half of every row
            b.add("setindex", ["x": y, "key": [1, [2, 0], ["slice": [nil, 1]]], "value": [[7], [8]]])
            b.add("setindex", ["x": y, "key": [[0, 0], 1, [1, 3]], "value": [5, 6]])
            b.save(y, "y")
            b.save(untouched, "untouched")
            b.save(c, "x")
        }
        var expected = x.toArray()
        for row in 0..<6 { expected[row * 4 + 2] = 0; expected[row * 4 + 3] = 0 }
        expected[12 + 2 * 4] = 7
        expected[12 + 0 * 4] = 8
        expected[4 + 1] = 5
        expected[4 + 3] = 6
        assertValues(r["y"], [2, 3, 4], expected, "y after the writes")
        assertValues(r["untouched"], [2, 3, 4], x.toArray(), "a clone taken before")
        assertValues(r["x"], [2, 3, 4], x.toArray(), "the constant")
    }
}
