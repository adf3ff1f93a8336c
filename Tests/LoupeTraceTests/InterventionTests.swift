import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Each built-in intervention, run in a batched trace, against a hand-written hook doing
/// the same to the invocation run alone.
final class InterventionTests: XCTestCase {
    let clean = [5, 17, 300, 42, 8, 99, 23, 61]
    let corrupted = [5, 17, 300, 7, 8, 99, 140, 61]
    let third = [9, 201, 33, 42, 77, 99, 5, 61]
    let models = ["gpt2-tiny", "llama-tiny"]

    /// Runs `intervention` on invocation 1 of [clean, corrupted, third] and returns that
    /// invocation's logits at every position.
    func traced(_ model: String, _ name: String, _ params: [String: TraceValue], extra: (inout TraceBuilder) -> [String: TraceValue] = { _ in [:] }) throws -> Tensor {
        var b = TraceBuilder()
        var params = params
        for (key, value) in extra(&b) { params[key] = value }
        b.add("intervene", ["name": .string(name), "invoke": 1, "params": .map(params)])
        b.save(b.get("lm_head", invoke: 1), "logits")
        let result = try Fixtures.shared.runner(model).run(b.trace([clean, corrupted, third]))
        XCTAssertEqual(result.logits, .all)
        return result["logits"]!
    }

    /// The corrupted prompt alone with hooks; `record` first runs each of those token lists
    /// alone and keeps the values at the given sites.
    func reference(_ model: String, record sites: [Site], _ edits: ([[Int]: ActivationRecorder]) -> [Site: (inout Tensor) -> Void]) throws -> Tensor {
        let m = try Fixtures.shared.runner(model).model
        var recorded = [[Int]: ActivationRecorder]()
        for tokens in [clean, corrupted, third] {
            let recorder = ActivationRecorder(sites)
            _ = try m.forward(TokenBatch([tokens]), hooks: recorder)
            recorded[tokens] = recorder
        }
        return try m.forward(TokenBatch([corrupted]), hooks: EditHook(edits(recorded)), logits: .all)
    }

    func unpatched(_ model: String) throws -> Tensor {
        try Fixtures.shared.runner(model).model.forward(TokenBatch([corrupted]))
    }

    /// Asserts the two agree and that the intervention did something.
    func check(_ got: Tensor, _ expected: Tensor, _ model: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        assertClose(got, expected, what + " on " + model, file: file, line: line)
        XCTAssertGreaterThan(maxDifference(expected, try unpatched(model)), 1e-4, "\(what) on \(model) must change the logits", file: file, line: line)
    }

    func testResidualPatch() throws {
        for model in models {
            let sites = [Site("blocks.0.resid_post", .output), Site("blocks.1.resid_post", .output), Site("blocks.1.resid_pre", .output)]
            let got = try traced(model, "residual_patch", ["source": 0, "layers": [0, 1], "positions": [3, -2]])
            let expected = try reference(model, record: sites) { r in
                var edits = [Site: (inout Tensor) -> Void]()
                for site in sites.prefix(2) {
                    let source = r[self.clean]!.values[site]!
                    edits[site] = { value in
                        for t in [3, 6] { value.slice(axis: 1, t..<(t + 1)).assign(from: source.slice(axis: 1, t..<(t + 1))) }
                    }
                }
                return edits
            }
            try check(got, expected, model, "residual_patch")

            let pre = try traced(model, "residual_patch", ["source": 2, "layers": 1, "stream": "resid_pre"])
            let expectedPre = try reference(model, record: sites) { r in
                let source = r[self.third]!.values[sites[2]]!
                return [sites[2]: { $0.assign(from: source) }]
            }
            try check(pre, expectedPre, model, "residual_patch at resid_pre")
        }
    }

    func testHeadPatch() throws {
        for model in models {
            let z = Site("blocks.1.attn.z", .output), v = Site("blocks.0.attn.v", .output)
            let got = try traced(model, "head_patch", ["source": 0, "layer": 1, "head": 2, "positions": [3, 6, 7]])
            let expected = try reference(model, record: [z]) { r in
                let source = r[self.clean]!.values[z]!
                return [z: { value in
                    for t in [3, 6, 7] {
                        value.slice(axis: 1, t..<(t + 1)).slice(axis: 2, 2..<3).assign(from: source.slice(axis: 1, t..<(t + 1)).slice(axis: 2, 2..<3))
                    }
                }]
            }
            try check(got, expected, model, "head_patch z")

            // Values are per key/value head: llama-tiny's head 1 of v is shared by query heads 2 and 3.
            let gotV = try traced(model, "head_patch", ["source": 0, "layer": 0, "head": 1, "component": "v"])
            let expectedV = try reference(model, record: [v]) { r in
                let source = r[self.clean]!.values[v]!
                return [v: { value in value.slice(axis: 2, 1..<2).assign(from: source.slice(axis: 2, 1..<2)) }]
            }
            try check(gotV, expectedV, model, "head_patch v")
        }
    }

    func testAblateZero() throws {
        for model in models {
            let z = Site("blocks.0.attn.z", .output), mlp = Site("blocks.1.mlp_out", .output)
            let head = try traced(model, "ablate", ["component": "head", "layer": 0, "head": 1])
            try check(head, try reference(model, record: []) { _ in [z: { $0.slice(axis: 2, 1..<2).fill(0) }] }, model, "ablate head")
            let mlpZero = try traced(model, "ablate", ["component": "mlp", "layer": 1, "positions": [-1, 2]])
            try check(mlpZero, try reference(model, record: []) { _ in
                [mlp: { value in
                    value.slice(axis: 1, 7..<8).fill(0)
                    value.slice(axis: 1, 2..<3).fill(0)
                }]
            }, model, "ablate mlp")
        }
    }

    func testAblateMeanAndResample() throws {
        for model in models {
            let resid = Site("blocks.0.resid_post", .output), z = Site("blocks.1.attn.z", .output)
            let mean = try traced(model, "ablate", ["component": "resid", "layer": 0, "positions": [3, 6], "mode": "mean", "reference": [0, 2]])
            try check(mean, try reference(model, record: [resid]) { r in
                let a = r[self.clean]!.values[resid]!, b = r[self.third]!.values[resid]!
                return [resid: { value in
                    for t in [3, 6] {
                        let row = value.slice(axis: 1, t..<(t + 1))
                        let x = a.slice(axis: 1, t..<(t + 1)).toArray(), y = b.slice(axis: 1, t..<(t + 1)).toArray()
                        row.assign(from: Tensor(shape: row.shape, values: zip(x, y).map { ($0 + $1) / 2 }))
                    }
                }]
            }, model, "ablate resid mean")

            let resample = try traced(model, "ablate", ["component": "head", "layer": 1, "head": 3, "mode": "resample", "source": 2])
            try check(resample, try reference(model, record: [z]) { r in
                let source = r[self.third]!.values[z]!
                return [z: { $0.slice(axis: 2, 3..<4).assign(from: source.slice(axis: 2, 3..<4)) }]
            }, model, "ablate head resample")
        }
    }

    func testSteer() throws {
        for model in models {
            let hidden = try Fixtures.shared.runner(model).model.dimensions.hidden
            let vector = Tensor(shape: [hidden], values: (0..<hidden).map { Float(($0 * 37) % 11) / 10 - 0.5 })
            let site = Site("blocks.0.resid_post", .output)
            let got = try traced(model, "steer", ["layers": 0, "vector": .tensor(vector), "scale": 2.5, "positions": [0, -1]])
            try check(got, try reference(model, record: []) { _ in
                [site: { value in
                    for t in [0, 7] {
                        let row = value.slice(axis: 1, t..<(t + 1))
                        row.assign(from: Tensor(shape: row.shape, values: zip(row.toArray(), vector.toArray()).map { $0 + 2.5 * $1 }))
                    }
                }]
            }, model, "steer")

            // A vector computed in the trace: clean minus third at layer 0's last position, added at layer 1.
            let later = Site("blocks.1.resid_post", .output)
            let gotRef = try traced(model, "steer", ["layers": 1, "scale": -1]) { b in
                let a = b.index(b.get("blocks.0.resid_post", invoke: 0), [0, -1])
                let c = b.index(b.get("blocks.0.resid_post", invoke: 2), [0, -1])
                return ["vector": b.sub(a, c)]
            }
            try check(gotRef, try reference(model, record: [site]) { r in
                let a = r[self.clean]!.values[site]!.select(axis: 0, 0).select(axis: 0, 7).toArray()
                let c = r[self.third]!.values[site]!.select(axis: 0, 0).select(axis: 0, 7).toArray()
                let direction = zip(a, c).map { $0 - $1 }
                return [later: { value in
                    let rows = value.shape[1]
                    let updated = value.toArray().enumerated().map { $0.element - direction[$0.offset % direction.count] }
                    precondition(updated.count == rows * direction.count)
                    value.assign(from: Tensor(shape: value.shape, values: updated))
                }]
            }, model, "steer with a traced vector")
        }
    }

    func testSchemaForHello() throws {
        XCTAssertEqual(testInterventions.names, ["ablate", "head_patch", "residual_patch", "steer"])
        guard case .array(let entries) = testInterventions.schema, let first = entries.first else { return XCTFail("schema is an array") }
        XCTAssertEqual(first["name"]?.stringValue, "ablate")
        let parameters = first["parameters"]?.arrayValue ?? []
        XCTAssertEqual(parameters.first?["name"]?.stringValue, "component")
        XCTAssertEqual(parameters.first?["required"]?.boolValue, true)
        XCTAssertTrue(CompiledTrace.ops.contains("split_heads"))
    }
}
