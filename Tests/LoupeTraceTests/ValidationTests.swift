import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Every validation error, before any compute, with the protocol's code and the node at fault.
final class ValidationTests: XCTestCase {
    let tokens = [5, 17, 300, 42, 8, 99]
    let other = [5, 17, 300, 7, 8, 99]

    func runner(_ name: String = "gpt2-tiny") throws -> TraceRunner { try Fixtures.shared.runner(name) }

    /// Compiling `nodes` fails with `code` at node `node` (and field, when given).
    func assertRejects(_ nodes: [TraceValue], invocations: [[Int]]? = nil, model: String = "gpt2-tiny",
                       _ code: TraceError.Code, node: Int?, field: String? = nil, mentions: String? = nil,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let trace = Trace(invocations: invocations ?? [tokens, other], nodes: nodes)
        do {
            _ = try runner(model).compile(trace)
            XCTFail("expected \(code.rawValue), the trace compiled", file: file, line: line)
        } catch let error as TraceError {
            XCTAssertEqual(error.code, code, error.description, file: file, line: line)
            XCTAssertEqual(error.node, node, error.description, file: file, line: line)
            if let field { XCTAssertEqual(error.field, field, error.description, file: file, line: line) }
            if let mentions { XCTAssertTrue(error.message.contains(mentions), error.description, file: file, line: line) }
        }
    }

    func node(_ id: Int, _ op: String, _ fields: [String: TraceValue] = [:]) -> TraceValue {
        var map = fields
        map["id"] = .int(id)
        map["op"] = .string(op)
        return .map(map)
    }

    func get(_ id: Int, _ site: String, invoke: Int = 0, io: String = "output", item: Int? = 0) -> TraceValue {
        var fields: [String: TraceValue] = ["site": .string(site), "io": .string(io), "invoke": .int(invoke)]
        if let item { fields["item"] = .int(item) }
        return node(id, "get", fields)
    }

    func testUnknownSite() throws {
        try assertRejects([get(0, "transformer.h.9")], .unknownSite, node: 0, field: "nodes.0.site", mentions: "transformer.h.9")
        try assertRejects([get(0, "transformer.h.0.attn.c_proj", io: "sideways", item: nil)], .badRequest, node: 0, field: "nodes.0.io")
        try assertRejects([node(3, "get", ["site": "model.layers.0", "invoke": 0])], .unknownSite, node: 3)
    }

    func testWriteAfterTheModelPassedTheSite() throws {
        // Writing layer 0's output of invocation 1 with layer 1's output of invocation 0.
        try assertRejects([
            get(0, "transformer.h.1", invoke: 0),
            get(1, "transformer.h.0", invoke: 1),
            node(2, "setindex", ["x": .ref(1), "key": [all, 2], "value": .ref(0)]),
        ], .shapeMismatch, node: 2)
        try assertRejects([
            get(0, "transformer.h.1", invoke: 0),
            get(1, "transformer.h.0", invoke: 1),
            node(2, "index", ["x": .ref(0), "key": [all, 2]]),
            node(3, "setindex", ["x": .ref(1), "key": [all, 2], "value": .ref(2)]),
        ], .outOfOrder, node: 3, mentions: "transformer.h.0")
        // Replacing a site's value with something computed from the logits.
        try assertRejects([
            get(0, "lm_head", item: nil),
            node(1, "index", ["x": .ref(0), "key": [0, -1, ["slice": [0, 64]]]]),
            node(2, "set", ["site": "transformer.h.0.mlp", "invoke": 1, "value": .ref(1)]),
        ], .outOfOrder, node: 2)
        // A view of an earlier site written once the pass is past it.
        try assertRejects([
            get(0, "transformer.h.0", invoke: 1),
            node(1, "index", ["x": .ref(0), "key": [all, 3]]),
            get(2, "transformer.h.1", invoke: 0),
            node(3, "index", ["x": .ref(2), "key": [0, 5]]),
            node(4, "setindex", ["x": .ref(1), "key": [0], "value": 0.5]),
            node(5, "setindex", ["x": .ref(4), "key": [0], "value": .ref(3)]),
        ], .outOfOrder, node: 5)
        // Steering with a vector known only after the layer it steers.
        try assertRejects([
            get(0, "transformer.h.1", invoke: 0),
            node(1, "index", ["x": .ref(0), "key": [0, -1]]),
            node(2, "intervene", ["name": "steer", "invoke": 1, "params": ["layers": 0, "vector": .ref(1)]]),
        ], .outOfOrder, node: 2)
        // The same write from a copy taken with clone is fine: it changes only the copy.
        XCTAssertNoThrow(try runner().compile(Trace(invocations: [tokens, other], nodes: [
            get(0, "transformer.h.0", invoke: 1), node(1, "clone", ["x": .ref(0)]),
            get(2, "transformer.h.1", invoke: 0), node(3, "index", ["x": .ref(2), "key": [all, 5]]),
            node(4, "setindex", ["x": .ref(1), "key": [all, 0], "value": .ref(3)]),
        ])))
    }

    func testIndexOutOfRange() throws {
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [0, 6, all]])],
                          .indexOutOfRange, node: 1, field: "nodes.1.key", mentions: "index 6")
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [0, -7]])], .indexOutOfRange, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [0, 0, 0, 0]])],
                          .indexOutOfRange, node: 1, mentions: "too many indices")
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [0, [1, 9]]])], .indexOutOfRange, node: 1)
        try assertRejects([get(0, "lm_head", item: nil), node(1, "index", ["x": .ref(0), "key": [0, -1, 512]])], .indexOutOfRange, node: 1)
        try assertRejects([get(0, "transformer.h.0", invoke: 2)], .indexOutOfRange, node: 0, field: "nodes.0.invoke")
        try assertRejects([get(0, "transformer.h.0"), node(1, "sum", ["x": .ref(0), "dim": 3])], .indexOutOfRange, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "topk", ["x": .ref(0), "k": 65])], .indexOutOfRange, node: 1)
        try assertRejects([node(0, "constant", ["value": 1])], invocations: [[5, 512]], .indexOutOfRange, node: nil,
                          field: "invokes.0.tokens.1")
    }

    func testShapeMismatch() throws {
        // A whole [1, 6, 64] hidden state into one position.
        try assertRejects([
            get(0, "transformer.h.0", invoke: 0), get(1, "transformer.h.0", invoke: 1),
            node(2, "setindex", ["x": .ref(1), "key": [all, 2, all], "value": .ref(0)]),
        ], .shapeMismatch, node: 2, field: "nodes.2.value")
        // Invocations of different lengths: the whole value does not fit.
        try assertRejects([
            get(0, "transformer.h.0", invoke: 0), get(1, "transformer.h.0", invoke: 1),
            node(2, "setindex", ["x": .ref(1), "key": [all], "value": .ref(0)]),
        ], invocations: [tokens, [1, 2, 3]], .shapeMismatch, node: 2)
        // Replacing o_proj's input with the heads not merged back.
        try assertRejects([
            get(0, "transformer.h.0.attn.c_proj", io: "input", item: nil),
            node(1, "split_heads", ["x": .ref(0), "heads": 4]),
            node(2, "set", ["site": "transformer.h.0.attn.c_proj", "io": "input", "invoke": 0, "value": .ref(1)]),
        ], .shapeMismatch, node: 2)
        try assertRejects([get(0, "transformer.h.0"), node(1, "split_heads", ["x": .ref(0), "heads": 5])], .shapeMismatch, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "reshape", ["x": .ref(0), "shape": [7, -1]])], .shapeMismatch, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "add", ["x": .ref(0), "y": [1, 2, 3]])], .shapeMismatch, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "matmul", ["x": .ref(0), "y": .ref(0)])], .shapeMismatch, node: 1)
        try assertRejects([get(0, "transformer.h.0"), get(1, "lm_head", item: nil), node(2, "cat", ["xs": [.ref(0), .ref(1)], "dim": 1])],
                          .shapeMismatch, node: 2)
        try assertRejects([node(0, "intervene", ["name": "residual_patch", "invoke": 1, "params": ["source": 0]])],
                          invocations: [tokens, [1, 2, 3]], .shapeMismatch, node: 0, field: "nodes.0.params.positions")
        try assertRejects([node(0, "intervene", ["name": "steer", "invoke": 1, "params": ["layers": 0, "vector": [1, 2, 3]]])],
                          .shapeMismatch, node: 0, field: "nodes.0.params.vector")
    }

    func testSizesAreBounded() throws {
        try assertRejects([node(0, "full", ["shape": [.int(1 << 40), .int(1 << 40)], "value": 0])], .tooLarge, node: 0, field: "nodes.0.shape")
        try assertRejects([node(0, "full", ["shape": [.int(1 << 20)], "value": 1]), node(1, "reshape", ["x": .ref(0), "shape": [-1, .int(1 << 62), 4]])],
                          .tooLarge, node: 1)
        try assertRejects([node(0, "full", ["shape": [.int(1 << 15), 1], "value": 1]), node(1, "transpose", ["x": .ref(0), "dim0": 0, "dim1": 1]),
                           node(2, "matmul", ["x": .ref(0), "y": .ref(1)])], .tooLarge, node: 2)
        // A huge step is one element, not an overflow.
        let result = try runner().run(Trace(invocations: [tokens], nodes: [
            node(0, "full", ["shape": [5], "value": 2]),
            node(1, "index", ["x": .ref(0), "key": [["slice": [1, nil, .int(Int.max)]]]]), node(2, "save", ["x": .ref(1), "name": "one"]),
        ]))
        XCTAssertEqual(result["one"]?.toArray(), [2])
    }

    func testReferencesOnlyToEarlierNodes() throws {
        try assertRejects([node(0, "neg", ["x": .ref(1)]), node(1, "constant", ["value": 1])], .badRequest, node: 0, mentions: "not defined before")
        try assertRejects([node(0, "add", ["x": .ref(0), "y": 1])], .badRequest, node: 0, mentions: "cycle")
        try assertRejects([node(0, "constant", ["value": 1]), node(0, "constant", ["value": 2])], .badRequest, node: 0, mentions: "twice")
        try assertRejects([node(4, "intervene", ["name": "ablate", "invoke": 0, "params": ["component": "mlp", "layer": 0]]),
                           node(5, "save", ["x": .ref(4), "name": "nothing"])], .badRequest, node: 5, mentions: "no value")
    }

    func testUnknownOpAndIntervention() throws {
        try assertRejects([node(0, "python_eval", ["code": "import os"])], .unknownOp, node: 0, field: "nodes.0.op")
        try assertRejects([node(0, "intervene", ["name": "lobotomy", "invoke": 0])], .unknownIntervention, node: 0)
    }

    func testWrongArgumentTypes() throws {
        try assertRejects([node(0, "neg", ["x": "zero"])], .badRequest, node: 0, field: "nodes.0.x")
        try assertRejects([node(0, "get", ["site": 3, "invoke": 0])], .badRequest, node: 0, field: "nodes.0.site")
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [["start": 1]]])], .badRequest, node: 1, field: "nodes.1.key.0")
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": ["...", "..."]])], .badRequest, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "index", ["x": .ref(0), "key": [["slice": [0, 4, -1]]]])], .badRequest, node: 1)
        try assertRejects([get(0, "transformer.h.0"), node(1, "softmax", ["x": .ref(0), "dim": "last"])], .badRequest, node: 1, field: "nodes.1.dim")
        try assertRejects([get(0, "transformer.h.0"), node(1, "save", ["x": .ref(0)])], .badRequest, node: 1, field: "nodes.1.name")
        try assertRejects([get(0, "transformer.h.0"), node(1, "save", ["x": .ref(0), "name": "a"]), node(2, "save", ["x": .ref(0), "name": "a"])],
                          .badRequest, node: 2, mentions: "twice")
        try assertRejects([node(0, "get", ["site": "transformer.h.0"])], .badRequest, node: 0, field: "nodes.0.invoke")
        try assertRejects([get(0, "transformer.h.0.mlp", item: 0)], .badRequest, node: 0, field: "nodes.0.item", mentions: "not a tuple")
        try assertRejects([node(7, "constant", ["value": [[1, 2], [3]]])], .badRequest, node: 7)
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 0]])],
                          .badRequest, node: 0, field: "nodes.0.params.head")
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 0, "head": 0, "heads": 2]])],
                          .badRequest, node: 0, field: "nodes.0.params.heads")
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": "clean", "layer": 0, "head": 0]])],
                          .badRequest, node: 0, field: "nodes.0.params.source")
        try assertRejects([node(0, "intervene", ["name": "ablate", "invoke": 1, "params": ["component": "mlp", "layer": 0, "mode": "mean"]])],
                          .badRequest, node: 0, field: "nodes.0.params.reference")
    }

    func testInterventionRanges() throws {
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 2, "head": 0]])],
                          .indexOutOfRange, node: 0, field: "nodes.0.params.layer")
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 0, "head": 4]])],
                          .indexOutOfRange, node: 0, field: "nodes.0.params.head")
        // llama-tiny has 4 query heads sharing 2 key/value heads.
        try assertRejects([node(0, "intervene", ["name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 0, "head": 2, "component": "k"]])],
                          model: "llama-tiny", .indexOutOfRange, node: 0, field: "nodes.0.params.head", mentions: "2 heads")
        try assertRejects([node(0, "intervene", ["name": "residual_patch", "invoke": 1, "params": ["source": 5]])],
                          .indexOutOfRange, node: 0, field: "nodes.0.params.source")
        try assertRejects([node(0, "intervene", ["name": "residual_patch", "invoke": 1, "params": ["source": 0, "positions": [6]]])],
                          .indexOutOfRange, node: 0, field: "nodes.0.params.positions")
    }

    func testInvocations() throws {
        try assertRejects([], invocations: [], .badRequest, node: nil, field: "invokes")
        try assertRejects([], invocations: [tokens, []], .badRequest, node: nil, field: "invokes.1")
        try assertRejects([], invocations: [Array(repeating: 1, count: 65)], .tooLarge, node: nil, field: "invokes.0")
        XCTAssertThrowsError(try Trace(["invokes": [["prompt": "After John"]], "nodes": []])) { error in
            XCTAssertEqual((error as? TraceError)?.code, .badRequest)
            XCTAssertEqual((error as? TraceError)?.field, "invokes.0.prompt")
        }
    }

    /// A trace decoded from plain data, as the daemon hands it over, with prompts
    /// tokenized by the caller and sites written as `PATH.output`.
    func testDecodesFromValueTree() throws {
        let value: TraceValue = [
            "invokes": [["prompt": "abc"], ["tokens": [5, 17, 300]]],
            "nodes": [
                ["id": 10, "op": "get", "site": "transformer.h.1.output", "item": 0, "invoke": 1],
                ["id": 11, "op": "index", "x": ["ref": 10], "key": [0, -1, ["slice": [nil, 4]]]],
                ["id": 12, "op": "save", "x": ["ref": 11], "name": "h"],
            ],
        ]
        let trace = try Trace(value, tokenize: { text in text.unicodeScalars.map { Int($0.value) } })
        XCTAssertEqual(trace.invocations, [[97, 98, 99], [5, 17, 300]])
        let tensorTokens = try Trace(["invokes": [["tokens": .tensor(Tensor(shape: [1, 3], values: [5, 17, 300]))]], "nodes": []])
        XCTAssertEqual(tensorTokens.invocations, [[5, 17, 300]])
        XCTAssertThrowsError(try Trace(["invokes": [["tokens": [5, 1.5]]], "nodes": []])) { error in
            XCTAssertEqual((error as? TraceError)?.field, "invokes.0.tokens.1")
        }
        let result = try runner().run(trace)
        XCTAssertEqual(result.names, ["h"])
        XCTAssertEqual(result["h"]?.shape, [4])
        XCTAssertEqual(result.logits, .none, "nothing reads the logits, so none are computed")
    }
}
