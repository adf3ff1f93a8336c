import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTestSupport
import LoupeWire
import XCTest

/// The `sweep` op on the tiny fixture models: the daemon's matrices equal the plain
/// reference path (every patch its own invocation of one batched pass), progress streams,
/// cancellation, typed errors.
final class SweepOpTests: XCTestCase {
    nonisolated(unsafe) static var live: LiveDaemon?

    override class func setUp() {
        live = try? LiveDaemon()
        _ = try? live?.call("models.load", ["name": "gpt2", "source": .string(Fixtures.gpt2Tiny)])
        _ = try? live?.call("models.load", ["name": "llama", "source": .string(Fixtures.llamaTiny)])
    }

    override class func tearDown() { live?.stop() }

    private func daemon() throws -> LiveDaemon { try XCTUnwrap(Self.live, "the daemon did not start") }

    private let clean = [226, 166, 280, 485, 436, 17, 429, 60, 258]
    private var corrupted: [Int] { var c = clean; c[2] = 7; c[5] = 99; return c }

    private func request(_ model: String, _ kind: SweepKind, _ metric: MessageValue, normalized: Bool) -> [String: MessageValue] {
        ["model": .string(model), "clean": MessageValue(clean), "corrupted": MessageValue(corrupted),
         "kind": .string(kind.rawValue), "metric": metric, "normalized": .bool(normalized)]
    }

    private static func matrix(_ reply: MessageValue) -> [[Float]] {
        (reply["values"]?.arrayValue ?? []).map { ($0.arrayValue ?? []).map { Float($0.doubleValue ?? .nan) } }
    }

    func testEqualsThePlainPathOnBothArchitectures() throws {
        let live = try daemon()
        let registry = Fixtures.registry()
        for (name, path) in [("gpt2", Fixtures.gpt2Tiny), ("llama", Fixtures.llamaTiny)] {
            let model = try LoadedModel.load(path, registry: registry).model
            let cases: [(MessageValue, SweepMetric)] = [
                (["logit_diff": ["answer": 1, "wrong": 2]], .logitDifference(answer: 1, wrong: 2)),
                (["logprob": ["answer": 5]], .logProbability(answer: 5)),
                (["kl": [:]], .klFromClean),
            ]
            // Neurons run on the plain path itself (AttributionSweepOpTests checks them).
            for kind in SweepKind.allCases where kind != .neurons {
                for (wire, metric) in cases {
                    for normalized in [true, false] {
                        let reply = try live.call("sweep", request(name, kind, wire, normalized: normalized))
                        let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(
                            SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: metric, normalized: normalized))
                        let got = Self.matrix(reply)
                        let context = "\(name) \(kind) \(metric) normalized \(normalized)"
                        XCTAssertEqual(got.count, model.dimensions.layers, context)
                        for (row, expected) in zip(got, plain.values) {
                            XCTAssertEqual(row.count, expected.count, context)
                            for (a, b) in zip(row, expected) { XCTAssertEqual(a, b, accuracy: 1e-4, context) }
                        }
                        XCTAssertEqual(Float(reply["clean"]?.doubleValue ?? .nan), plain.clean, accuracy: 1e-4, context)
                        XCTAssertEqual(Float(reply["corrupted"]?.doubleValue ?? .nan), plain.corrupted ?? .nan, accuracy: 1e-4, context)
                        XCTAssertEqual(reply["first_difference"], 2)
                        XCTAssertEqual(reply["rows"], MessageValue((0..<model.dimensions.layers).map(String.init)))
                        let heads = model.dimensions.heads
                        let cols = switch kind {
                        case .residual, .mlp: clean.enumerated().map { "\($1)_\($0)" }
                        case .heads: (0..<heads).map { "Head \($0)" }
                        case .headPositions: (0..<heads).flatMap { h in clean.indices.map { "Head \(h) @ \($0)" } }
                        case .neurons: (0..<model.dimensions.intermediate).map { "Neuron \($0)" }
                        }
                        XCTAssertEqual(reply["cols"], MessageValue(cols), context)
                    }
                }
            }
        }
    }

    func testProgressStreamsAndDetachedResults() throws {
        let live = try daemon()
        var interim = [MessageValue]()
        let reply = try live.client().call("sweep", request("gpt2", .residual, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true)) {
            interim.append($0)
        }
        let statuses = interim.compactMap { $0["status"]?.stringValue }
        XCTAssertEqual(statuses.first, "accepted")
        XCTAssertTrue(statuses.contains("running"), "\(statuses)")
        let progress = interim.filter { $0["status"] == "progress" }
        XCTAssertFalse(progress.isEmpty, "no progress reply: \(statuses)")
        XCTAssertEqual(progress.last?["total"], 2)
        XCTAssertNotNil(reply.body["timing"])

        // Detached, then fetched: the same matrix.
        var fields = request("gpt2", .residual, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true)
        fields["mode"] = "detach"
        let job = try XCTUnwrap(live.client().call("sweep", fields).body["job"])
        let fetched = try live.call("jobs.result", ["job": job, "mode": "wait"])
        XCTAssertEqual(fetched["values"], reply.body["values"])
    }

    func testACancelledQueuedSweepNeverRuns() throws {
        // A sweep queued behind a long forward pass (1,024 rows of 64 tokens) is cancelled
        // before it starts: its requester hears `cancelled`, and it never runs.
        let live = try daemon()
        let client = try live.client()
        let rows: [MessageValue] = (0..<1024).map { (row: Int) -> MessageValue in MessageValue((0..<64).map { (row * 7 + $0) % 512 }) }
        try client.send(WireMessage(["id": 1, "op": "forward", "model": "llama", "tokens": .array(rows), "top_k": 1, "mode": "detach"]))
        let accepted = try XCTUnwrap(client.receive(timeout: 10)?.body)
        XCTAssertEqual(accepted["status"], "accepted")
        // The long pass is only there to hold the queue: stop it when done here.
        defer { _ = try? live.call("jobs.cancel", ["job": accepted["job"] ?? .null]) }
        var fields = request("llama", .heads, ["kl": [:]], normalized: false)
        fields["mode"] = "detach"
        let job = try XCTUnwrap(live.client().call("sweep", fields).body["job"])
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["state"], "queued")
        let cancel = try live.call("jobs.cancel", ["job": job])
        XCTAssertEqual(cancel["state"], "cancelled")
        do {
            try live.call("jobs.result", ["job": job])
            XCTFail("a cancelled sweep returned a result")
        } catch ClientError.daemon(let error) {
            XCTAssertEqual(error.code, .cancelled)
        }
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["progress"]?["done"], 0)
    }

    func testErrorsAreTyped() throws {
        let live = try daemon()
        let metric: MessageValue = ["logit_diff": ["answer": 1, "wrong": 2]]
        var fields = request("gpt2", .residual, metric, normalized: true)
        fields["corrupted"] = MessageValue(Array(corrupted.dropLast()))
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "corrupted")
        fields["corrupted"] = MessageValue(clean)
        let same = try live.expectError(.badRequest, "sweep", fields)
        XCTAssertTrue(same.message.contains("same tokens"), same.message)
        fields = request("gpt2", .residual, ["logit_diff": ["answer": " John", "wrong": 2]], normalized: true)
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "metric.logit_diff.answer")
        fields = request("gpt2", .residual, ["logit_diff": ["answer": 1, "wrong": 9999]], normalized: true)
        XCTAssertEqual(try live.expectError(.indexOutOfRange, "sweep", fields).field, "metric.logit_diff.wrong")
        fields = request("gpt2", .residual, ["logprob": [:]], normalized: true)
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "metric.logprob.answer")
        fields = request("gpt2", .residual, metric, normalized: true)
        fields["kind"] = "neuron"
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "kind")
        fields = request("gpt2", .residual, metric, normalized: true)
        fields.removeValue(forKey: "metric")
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "metric")
        fields = request("nope", .residual, metric, normalized: true)
        try live.expectError(.unknownModel, "sweep", fields)
        fields = request("gpt2", .residual, metric, normalized: true)
        fields["clean"] = "a prompt"
        XCTAssertEqual(try live.expectError(.badRequest, "sweep", fields).field, "clean")
        // Longer than the context (64).
        fields["clean"] = MessageValue(Array(repeating: 1, count: 65))
        fields["corrupted"] = MessageValue(Array(repeating: 1, count: 64) + [2])
        try live.expectError(.tooLarge, "sweep", fields)
    }

    private let references: [[Int]] = [[9, 14, 280, 41, 436, 98, 22, 61, 401], [226, 170, 30, 485, 80, 99, 3, 60, 258]]

    /// Asserts a reply's matrix and values equal a plain-path result's.
    private func assertEqual(_ reply: MessageValue, _ plain: PairSweep, _ context: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        let got = Self.matrix(reply)
        XCTAssertEqual(got.count, plain.values.count, context, file: file, line: line)
        for (row, expected) in zip(got, plain.values) {
            XCTAssertEqual(row.count, expected.count, context, file: file, line: line)
            for (a, b) in zip(row, expected) { XCTAssertEqual(a, b, accuracy: 1e-4, context, file: file, line: line) }
        }
        XCTAssertEqual(Float(reply["clean"]?.doubleValue ?? .nan), plain.clean, accuracy: 1e-4, context, file: file, line: line)
        if let corrupted = plain.corrupted {
            XCTAssertEqual(Float(reply["corrupted"]?.doubleValue ?? .nan), corrupted, accuracy: 1e-4, context, file: file, line: line)
        } else {
            XCTAssertEqual(reply["corrupted"], .null, context, file: file, line: line)
        }
    }

    func testAblationSweepsEqualThePlainPath() throws {
        let live = try daemon()
        let model = try LoadedModel.load(Fixtures.llamaTiny, registry: Fixtures.registry()).model
        let metric = SweepMetric.logitDifference(answer: 1, wrong: 2)
        let cases: [(SweepKind, AblationMethod, Bool)] = [(.heads, .zero, false), (.residual, .mean, false), (.mlp, .resample, true),
                                                          (.headPositions, .zero, true)]
        for (kind, method, withCorrupted) in cases {
            var fields = request("llama", kind, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true)
            if !withCorrupted { fields.removeValue(forKey: "corrupted") }
            fields["intervention"] = "ablate"
            var params: [String: MessageValue] = ["mode": .string(method.rawValue)]
            if method == .mean { params["reference"] = .array(references.map { MessageValue($0) }) }
            fields["params"] = .map(params)
            let reply = try live.call("sweep", fields)
            let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(SweepRequest(
                pairs: [SweepPair(clean: clean, corrupted: withCorrupted ? corrupted : nil, metric: metric)], kind: kind,
                intervention: .ablate(method), reference: method == .mean ? references : []))
            assertEqual(reply, plain.pairs[0], "\(kind) \(method)")
            XCTAssertEqual(reply["intervention"], "ablate")
            XCTAssertEqual(reply["params"], ["mode": .string(method.rawValue)])
            XCTAssertEqual(reply["kind"], .string(kind.rawValue))
            XCTAssertNil(reply["pairs"], "one pair given as clean and corrupted: no list of pairs")
        }
        // Chosen layers: those rows, labelled with their layers.
        var fields = request("llama", .heads, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true)
        fields["layers"] = [1]
        let some = try live.call("sweep", fields)
        XCTAssertEqual(some["rows"], ["1"])
        let all = try live.call("sweep", request("llama", .heads, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true))
        XCTAssertEqual(Self.matrix(some).count, 1)
        for (a, b) in zip(Self.matrix(some)[0], Self.matrix(all)[1]) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    }

    /// Several pairs in one request: each pair's matrix is the plain path's for that pair,
    /// `values` the mean (raw metric averaged, normalised with the averaged clean and corrupted values).
    func testPairsEqualThePlainPath() throws {
        let live = try daemon()
        let model = try LoadedModel.load(Fixtures.gpt2Tiny, registry: Fixtures.registry()).model
        var other = clean, otherCorrupted = clean
        other[0] = 300
        otherCorrupted[0] = 300
        otherCorrupted[4] = 12
        let pairs = [SweepPair(clean: clean, corrupted: corrupted, metric: .logitDifference(answer: 1, wrong: 2)),
                     SweepPair(clean: other, corrupted: otherCorrupted, metric: .logitDifference(answer: 5, wrong: 9))]
        let wirePairs: MessageValue = [
            ["clean": MessageValue(clean), "corrupted": MessageValue(corrupted)],
            ["clean": MessageValue(other), "corrupted": ["tokens": MessageValue(otherCorrupted)], "metric": ["logit_diff": ["answer": 5, "wrong": 9]]],
        ]
        for (kind, intervention) in [(SweepKind.residual, SweepIntervention.patch), (.heads, .ablate(.resample))] {
            var fields: [String: MessageValue] = ["model": "gpt2", "kind": .string(kind.rawValue), "pairs": wirePairs,
                                                  "metric": ["logit_diff": ["answer": 1, "wrong": 2]]]
            if intervention != .patch { fields["intervention"] = "ablate"; fields["params"] = ["mode": "resample"] }
            let reply = try live.call("sweep", fields)
            let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(SweepRequest(pairs: pairs, kind: kind, intervention: intervention))
            let entries = try XCTUnwrap(reply["pairs"]?.arrayValue)
            XCTAssertEqual(entries.count, 2)
            for (index, entry) in entries.enumerated() {
                assertEqual(entry, plain.pairs[index], "\(kind) pair \(index)")
                XCTAssertEqual(entry["clean_tokens"], MessageValue(pairs[index].clean))
            }
            XCTAssertEqual(entries[1]["metric"], ["logit_diff": ["answer": 5, "wrong": 9]])
            XCTAssertEqual(entries[1]["first_difference"], 4)
            let mean = Self.matrix(reply)
            for (row, expected) in zip(mean, plain.values) {
                for (a, b) in zip(row, expected) { XCTAssertEqual(a, b, accuracy: 1e-4, "\(kind) mean") }
            }
            XCTAssertEqual(Float(reply["clean"]?.doubleValue ?? .nan), plain.clean, accuracy: 1e-4)
            XCTAssertEqual(reply["first_difference"], 2, "the least over the pairs")
        }
    }

    func testBadAblationAndPairFieldsAreTyped() throws {
        let live = try daemon()
        let metric: MessageValue = ["logit_diff": ["answer": 1, "wrong": 2]]
        func expect(_ code: ErrorCode, _ field: String, _ edit: (inout [String: MessageValue]) -> Void,
                    file: StaticString = #filePath, line: UInt = #line) throws {
            var fields = request("gpt2", .residual, metric, normalized: true)
            edit(&fields)
            XCTAssertEqual(try live.expectError(code, "sweep", fields).field, field, file: file, line: line)
        }
        try expect(.badRequest, "intervention") { $0["intervention"] = "prune" }
        try expect(.badRequest, "params.mode") { $0["intervention"] = "ablate"; $0["params"] = ["mode": "half"] }
        try expect(.badRequest, "params.mode") { $0["intervention"] = "ablate"; $0["params"] = ["mode": 3] }
        try expect(.badRequest, "params.layer") { $0["intervention"] = "ablate"; $0["params"] = ["layer": 1] }
        try expect(.badRequest, "params.mode") { $0["params"] = ["mode": "zero"] }
        try expect(.badRequest, "params") { $0["intervention"] = "ablate"; $0["params"] = "zero" }
        try expect(.badRequest, "params.reference") { $0["intervention"] = "ablate"; $0["params"] = ["mode": "mean"] }
        try expect(.badRequest, "params.reference") { $0["intervention"] = "ablate"; $0["params"] = ["mode": "zero", "reference": [[1, 2]]] }
        try expect(.shapeMismatch, "params.reference.1") { fields in
            fields["intervention"] = "ablate"
            fields["params"] = ["mode": "mean", "reference": [MessageValue(self.clean), [1, 2, 3]]]
        }
        try expect(.indexOutOfRange, "params.reference.0.1") { fields in
            fields["intervention"] = "ablate"
            fields["params"] = ["mode": "mean", "reference": [[1, 99999]]]
        }
        try expect(.badRequest, "corrupted") { fields in
            fields["intervention"] = "ablate"
            fields["params"] = ["mode": "resample"]
            fields.removeValue(forKey: "corrupted")
        }
        try expect(.badRequest, "corrupted") { $0.removeValue(forKey: "corrupted") }
        try expect(.indexOutOfRange, "layers.1") { $0["layers"] = [0, 2] }
        try expect(.badRequest, "layers.0") { $0["layers"] = ["0"] }
        try expect(.badRequest, "layers") { $0["layers"] = [1, 1] }
        try expect(.badRequest, "layers") { $0["layers"] = [] }
        // Pairs.
        let pair: MessageValue = ["clean": MessageValue(clean), "corrupted": MessageValue(corrupted)]
        try expect(.badRequest, "pairs") { $0["pairs"] = [pair] }
        try expect(.badRequest, "pairs") { $0["pairs"] = []; $0.removeValue(forKey: "clean"); $0.removeValue(forKey: "corrupted") }
        func pairs(_ list: MessageValue) -> (inout [String: MessageValue]) -> Void {
            { fields in
                fields["pairs"] = list
                fields.removeValue(forKey: "clean")
                fields.removeValue(forKey: "corrupted")
            }
        }
        try expect(.badRequest, "pairs.1", pairs([pair, 7]))
        try expect(.shapeMismatch, "pairs.1.clean", pairs([pair, ["clean": [1, 2, 3], "corrupted": [1, 2, 4]]]))
        try expect(.badRequest, "pairs.1.corrupted", pairs([pair, ["clean": [1, 2, 3], "corrupted": [1, 2]]]))
        try expect(.badRequest, "pairs.1.corrupted", pairs([pair, ["clean": [1, 2, 3]]]))
        try expect(.indexOutOfRange, "pairs.0.corrupted.3", pairs([["clean": MessageValue(clean), "corrupted": [1, 2, 3, 99999]]]))
        try expect(.indexOutOfRange, "pairs.1.metric.logit_diff.wrong", pairs([pair, ["clean": MessageValue(clean), "corrupted": MessageValue(corrupted),
                                                                                       "metric": ["logit_diff": ["answer": 1, "wrong": 99999]]]]))
        try expect(.badRequest, "pairs.0.metric") { fields in
            pairs([pair])(&fields)
            fields.removeValue(forKey: "metric")
        }
    }

    func testHelloListsSweepsTraceOpsAndInterventions() throws {
        let hello = try daemon().call("hello")
        XCTAssertEqual(hello["sweep"]?["kinds"], ["residual", "heads", "head_positions", "mlp", "neurons"])
        XCTAssertEqual(hello["sweep"]?["methods"], ["activation", "attribution"])
        XCTAssertEqual(hello["sweep"]?["neuron_positions"], ["last", "sum"])
        XCTAssertEqual(hello["sweep"]?["metrics"], ["logit_diff", "logprob", "kl"])
        XCTAssertEqual(hello["sweep"]?["interventions"], ["patch", "ablate"])
        XCTAssertEqual(hello["sweep"]?["ablation_modes"], ["zero", "mean", "resample"])
        let ops = hello["ops"]?.arrayValue ?? []
        XCTAssertTrue(ops.contains("sweep") && ops.contains("trace"))
        XCTAssertEqual(hello["interventions"]?.arrayValue?.compactMap { $0["name"]?.stringValue },
                       ["ablate", "head_patch", "residual_patch", "steer"])
        XCTAssertEqual(hello["interventions"]?.arrayValue?.first?["parameters"]?.arrayValue?.isEmpty, false)
        XCTAssertTrue(hello["trace_ops"]?.arrayValue?.contains("intervene") ?? false)
    }

    /// The tutorial's batched residual cell as a `trace` gives the sweep's matrix.
    func testTraceOfTheBatchedCellEqualsTheSweep() throws {
        let live = try daemon()
        let layers = 2, length = clean.count
        var nodes: [MessageValue] = []
        var id = 0
        func node(_ fields: [String: MessageValue]) -> Int {
            var fields = fields
            fields["id"] = MessageValue(id)
            nodes.append(.map(fields))
            id += 1
            return id - 1
        }
        func diff(_ invoke: Int) -> Int {
            let logits = node(["op": "get", "site": "lm_head", "io": "output", "invoke": MessageValue(invoke)])
            let right = node(["op": "index", "x": ["ref": MessageValue(logits)], "key": [0, -1, 1]])
            let wrong = node(["op": "index", "x": ["ref": MessageValue(logits)], "key": [0, -1, 2]])
            return node(["op": "sub", "x": ["ref": MessageValue(right)], "y": ["ref": MessageValue(wrong)]])
        }
        let cleanStates = (0..<layers).map { node(["op": "get", "site": .string("transformer.h.\($0)"), "io": "output", "item": 0, "invoke": 0]) }
        let cleanDiff = diff(0), corruptedDiff = diff(1)
        var invokes: [MessageValue] = [MessageValue(clean), MessageValue(corrupted)]
        var names = [String]()
        for layer in 0..<layers {
            for position in 0..<length {
                let invoke = invokes.count
                invokes.append(MessageValue(corrupted))
                let source = node(["op": "index", "x": ["ref": MessageValue(cleanStates[layer])], "key": [":", MessageValue(position), ":"]])
                let target = node(["op": "get", "site": .string("transformer.h.\(layer)"), "io": "output", "item": 0, "invoke": MessageValue(invoke)])
                _ = node(["op": "setindex", "x": ["ref": MessageValue(target)], "key": [":", MessageValue(position), ":"], "value": ["ref": MessageValue(source)]])
                let patched = diff(invoke)
                let up = node(["op": "sub", "x": ["ref": MessageValue(patched)], "y": ["ref": MessageValue(corruptedDiff)]])
                let down = node(["op": "sub", "x": ["ref": MessageValue(cleanDiff)], "y": ["ref": MessageValue(corruptedDiff)]])
                let ratio = node(["op": "div", "x": ["ref": MessageValue(up)], "y": ["ref": MessageValue(down)]])
                names.append("r\(layer)_\(position)")
                _ = node(["op": "save", "x": ["ref": MessageValue(ratio)], "name": .string(names.last!)])
            }
        }
        var interim = 0
        let traced = try live.client().call("trace", ["model": "gpt2", "invokes": .array(invokes), "nodes": .array(nodes)]) { _ in interim += 1 }.body
        XCTAssertGreaterThan(interim, 0, "accepted/running/progress replies")
        let swept = try live.call("sweep", request("gpt2", .residual, ["logit_diff": ["answer": 1, "wrong": 2]], normalized: true))
        let matrix = Self.matrix(swept)
        for layer in 0..<layers {
            for position in 0..<length {
                let value = try WireTensor(XCTUnwrap(traced["saved"]?["r\(layer)_\(position)"])).floats()
                XCTAssertEqual(value.count, 1)
                XCTAssertEqual(value[0], matrix[layer][position], accuracy: 1e-4, "layer \(layer) position \(position)")
            }
        }
        XCTAssertEqual(traced["names"], MessageValue(names))
    }
}
