import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Every bad form of a gradient trace fails with the protocol's code, naming the node at
/// fault: at validation where the trace alone shows it, else when the backward meets it.
final class TraceGradientErrorTests: XCTestCase {
    let tokens = [3, 14, 15, 92, 65, 35]

    /// `build`'s trace fails with `code` at the node it returns, field `key` of that node, at
    /// validation (`validation`) or only when it runs.
    func assertFails(_ code: TraceError.Code, validation: Bool = true, key: String, mentions: [String] = [],
                     runner: TraceRunner? = nil, file: StaticString = #filePath, line: UInt = #line,
                     _ build: (inout TraceBuilder) -> TraceValue) throws {
        var t = TraceBuilder()
        let at = build(&t).reference
        let runner = try runner ?? Fixtures.shared.runner("gpt2-tiny")
        do {
            let compiled = try runner.compile(t.trace([tokens, tokens]))
            XCTAssertFalse(validation, "expected \(code.rawValue) at validation, the trace compiled", file: file, line: line)
            _ = try runner.run(compiled)
            XCTFail("expected \(code.rawValue), the trace ran", file: file, line: line)
        } catch let error as TraceError {
            XCTAssertEqual(error.code, code, error.description, file: file, line: line)
            XCTAssertEqual(error.node, at, error.description, file: file, line: line)
            XCTAssertEqual(error.field, "nodes.\(at ?? -1).\(key)", error.description, file: file, line: line)
            for word in mentions { XCTAssertTrue(error.message.contains(word), "\(error) should mention \(word)", file: file, line: line) }
        }
    }

    func logitDiff(_ t: inout TraceBuilder, invoke: Int = 0) -> TraceValue { t.logitDiff(t.get("logits", invoke: invoke), 5, 9) }

    func testBackwardOfMoreThanOneElement() throws {
        try assertFails(.shapeMismatch, key: "x", mentions: ["[1, 6, 64]"]) { t in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            t.add("grad", ["x": h])
            return t.add("backward", ["x": h])
        }
    }

    func testASecondBackward() throws {
        try assertFails(.badRequest, key: "op", mentions: ["one backward"]) { t in
            let s = logitDiff(&t)
            t.add("backward", ["x": s])
            return t.add("backward", ["x": s])
        }
    }

    func testGradientsWithoutABackward() throws {
        try assertFails(.badRequest, key: "op", mentions: ["backward"]) { t in
            t.add("grad", ["x": t.get("blocks.0.resid_post", invoke: 0)])
        }
        try assertFails(.badRequest, key: "op", mentions: ["backward"]) { t in
            t.add("set_grad", ["x": t.get("blocks.0.resid_post", invoke: 0), "value": 0])
        }
    }

    /// The forward pass is over when gradients exist: nothing computed from one may write into
    /// it, nor be the backward's own scalar.
    func testWritesIntoTheForwardPassFromAGradient() throws {
        func gradient(_ t: inout TraceBuilder) -> TraceValue {
            let h = t.get("blocks.0.resid_post", invoke: 0)
            t.add("backward", ["x": logitDiff(&t)])
            return t.add("grad", ["x": h])
        }
        try assertFails(.outOfOrder, key: "value") { t in
            let g = gradient(&t)
            return t.add("set", ["site": "blocks.1.resid_post", "invoke": 1, "value": g])
        }
        try assertFails(.outOfOrder, key: "value") { t in
            let g = gradient(&t)
            return t.add("setindex", ["x": t.get("blocks.1.resid_post", invoke: 1), "key": [0, 1], "value": t.index(g, [0, 1])])
        }
        try assertFails(.outOfOrder, key: "params.vector") { t in
            let g = gradient(&t)
            return t.add("intervene", ["name": "steer", "invoke": 1, "params": ["layers": 1, "vector": t.index(g, [0, 1])]])
        }
        try assertFails(.outOfOrder, key: "x") { t in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            let g = t.add("grad", ["x": h])
            return t.add("backward", ["x": t.add("sum", ["x": g])])
        }
    }

    /// Going backwards the last layer's gradient comes first: a set_grad at it cannot use one
    /// of an earlier layer.
    func testSetGradWithAGradientNotYetFlowed() throws {
        try assertFails(.outOfOrder, key: "value", mentions: ["node 1"]) { t in
            let early = t.get("blocks.0.resid_post", invoke: 0), late = t.get("blocks.1.resid_post", invoke: 0)
            t.add("backward", ["x": logitDiff(&t)])
            return t.add("set_grad", ["x": late, "value": t.add("grad", ["x": early])])
        }
    }

    func testGradientOfAGradient() throws {
        try assertFails(.badRequest, key: "x") { t in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            t.add("backward", ["x": logitDiff(&t)])
            return t.add("grad", ["x": t.add("grad", ["x": h])])
        }
    }

    /// A value the scalar does not depend on, named with the backward: at validation when the
    /// model computes it after every site the scalar reads, else when no gradient reaches it.
    func testGradientOfAValueTheScalarDoesNotDependOn() throws {
        try assertFails(.badRequest, key: "x", mentions: ["node 2", "node 3", "node 1", "blocks.1.resid_post"]) { t in
            t.add("get", ["site": "blocks.0.resid_post", "invoke": 0])
            let later = t.get("blocks.1.resid_post", invoke: 0)
            let s = t.add("sum", ["x": .ref(0)])
            t.add("backward", ["x": s])
            return t.add("grad", ["x": later])
        }
        try assertFails(.badRequest, validation: false, key: "x", mentions: ["node 1", "node 6"]) { t in
            let copy = t.add("clone", ["x": t.get("blocks.0.resid_post", invoke: 0)])  // the model goes on without it
            t.add("backward", ["x": logitDiff(&t)])
            return t.add("grad", ["x": copy])
        }
        try assertFails(.badRequest, validation: false, key: "x", mentions: ["activations"]) { t in
            let index = t.add("argmax", ["x": t.get("logits", invoke: 0)])
            t.add("grad", ["x": t.get("blocks.0.resid_post", invoke: 0)])
            return t.add("backward", ["x": index])
        }
        try assertFails(.badRequest, key: "x", mentions: ["no value of the model"]) { t in
            let c = t.add("sum", ["x": t.add("constant", ["value": [1, 2]])])
            return t.add("backward", ["x": c])
        }
    }

    /// Ops without a gradient on the scalar's path: topk's values, and an intervention
    /// computing with a closure.
    func testOpsWithoutAGradient() throws {
        try assertFails(.badRequest, validation: false, key: "op", mentions: ["topk"]) { t in
            let h = t.get("blocks.1.resid_post", invoke: 0)
            t.add("grad", ["x": h])
            let top = t.add("topk", ["x": h, "k": 2])
            t.add("backward", ["x": t.add("sum", ["x": top])])
            return top
        }
        let interventions = InterventionRegistry()
        interventions.register(Squash.self)
        let runner = try TraceRunner(model: try Fixtures.shared.runner("gpt2-tiny").model, interventions: interventions)
        try assertFails(.badRequest, validation: false, key: "op", mentions: ["closure"], runner: runner) { t in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            let squash = t.add("intervene", ["name": "squash", "invoke": 0, "params": [:]])
            t.add("backward", ["x": logitDiff(&t)])
            t.add("grad", ["x": h])
            return squash
        }
    }
}

/// An intervention computing with a closure (TensorMath.map), which no gradient passes.
enum Squash: Intervention {
    static let name = "squash"
    static let summary = "tanh of layer 0's output, element by element"
    static let parameters: [InterventionParameter] = []

    static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let target = context.target
        return [InterventionStep(site: Site("blocks.0.resid_post", .output)) { values in
            let value = values.value(target)
            value.assign(from: TensorMath.map(value) { tanh($0) })
        }]
    }
}
