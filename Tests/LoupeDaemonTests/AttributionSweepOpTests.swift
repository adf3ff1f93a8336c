import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTestSupport
import LoupeWire
import XCTest

/// `sweep` with method attribution on the tiny fixtures: the reply's shape is the exact
/// sweep's, several kinds come from one sweep, compare returns the exact matrix, and every
/// bad field is a typed error.
final class AttributionSweepOpTests: XCTestCase {
    nonisolated(unsafe) static var live: LiveDaemon?

    override class func setUp() {
        live = try? LiveDaemon()
        _ = try? live?.call("models.load", ["name": "gpt2", "source": .string(Fixtures.gpt2Tiny)])
    }

    override class func tearDown() { live?.stop() }

    private func daemon() throws -> LiveDaemon { try XCTUnwrap(Self.live, "the daemon did not start") }

    private let clean = [226, 166, 280, 485, 436, 17, 429, 60, 258]
    private var corrupted: [Int] { var c = clean; c[2] = 7; c[5] = 99; return c }
    private let metric: MessageValue = ["logit_diff": ["answer": 1, "wrong": 2]]

    private func request(_ kind: MessageValue, method: String = "attribution") -> [String: MessageValue] {
        ["model": "gpt2", "clean": MessageValue(clean), "corrupted": MessageValue(corrupted), "kind": kind, "metric": metric,
         "method": .string(method)]
    }

    private static func matrix(_ value: MessageValue?) -> [[Float]] {
        (value?["values"]?.arrayValue ?? []).map { ($0.arrayValue ?? []).map { Float($0.doubleValue ?? .nan) } }
    }

    /// A one-kind reply has the exact sweep's fields (labels, clean and corrupted values,
    /// tokens, work) and the engine's estimates, labelled as an approximation.
    func testOneKindIsShapedAsTheExactSweep() throws {
        let live = try daemon()
        let model = try LoadedModel.load(Fixtures.gpt2Tiny, registry: Fixtures.registry()).model
        for kind in SweepKind.allCases {
            let attribution = try live.call("sweep", request(.string(kind.rawValue)))
            let exact = try live.call("sweep", request(.string(kind.rawValue), method: "activation"))
            let expected = try AttributionSweep(model: model).run(SweepRequest(clean: clean, corrupted: corrupted, kind: kind,
                                                                              metric: .logitDifference(answer: 1, wrong: 2)), kinds: [kind])
            XCTAssertEqual(Set(attribution.mapValue!.keys), Set(exact.mapValue!.keys).union(["backward"]), "\(kind)")
            for key in ["kind", "rows", "cols", "row_axis", "col_axis", "clean_tokens", "corrupted_tokens", "first_difference", "intervention",
                        "normalized", "metric", "plain_token_layers", "neuron_positions"] {
                XCTAssertEqual(attribution[key], exact[key], "\(kind) \(key)")
            }
            for key in ["clean", "corrupted"] {
                XCTAssertEqual(attribution[key]?.doubleValue ?? .nan, exact[key]?.doubleValue ?? 0, accuracy: 1e-4, "\(kind) \(key)")
            }
            XCTAssertEqual(attribution["method"], "attribution")
            XCTAssertEqual(attribution["approximation"], true)
            XCTAssertEqual(exact["method"], "activation")
            XCTAssertEqual(exact["approximation"], false)
            for (got, row) in zip(Self.matrix(attribution), expected.results[0].values) {
                for (a, b) in zip(got, row) { XCTAssertEqual(a, b, accuracy: 1e-6, "\(kind)") }
            }
            XCTAssertEqual(attribution["token_layers"], MessageValue(2 * clean.count * model.dimensions.layers), "two passes")
            XCTAssertGreaterThan(attribution["backward"]?["saved_bytes"]?.intValue ?? 0, 0)
            XCTAssertGreaterThanOrEqual(attribution["backward"]?["peak_bytes"]?.intValue ?? 0, attribution["backward"]?["saved_bytes"]?.intValue ?? 0)
            XCTAssertGreaterThanOrEqual(attribution["backward"]?["bound_bytes"]?.intValue ?? 0, attribution["backward"]?["peak_bytes"]?.intValue ?? .max)
        }
        var fields = request("neurons")
        fields["neuron_positions"] = "sum"
        XCTAssertEqual(try live.call("sweep", fields)["neuron_positions"], "sum")
    }

    /// `kind` as an array: one result per kind, each the reply that kind alone gets.
    func testSeveralKindsEqualTheirOwnReplies() throws {
        let live = try daemon()
        let kinds: [MessageValue] = ["residual", "heads", "head_positions", "mlp", "neurons"]
        var interim = [MessageValue]()
        var fields = request(.array(kinds))
        fields["pairs"] = [["clean": MessageValue(clean), "corrupted": MessageValue(corrupted)]]
        fields.removeValue(forKey: "clean")
        fields.removeValue(forKey: "corrupted")
        let reply = try live.client().call("sweep", fields) { interim.append($0) }.body
        XCTAssertEqual(reply["method"], "attribution")
        XCTAssertEqual(reply["approximation"], true)
        XCTAssertEqual(reply["kinds"], .array(kinds))
        XCTAssertNotNil(reply["backward"]?["peak_bytes"])
        XCTAssertEqual(interim.last { $0["status"] == "progress" }?["total"], 4, "two passes of two layers")
        for kind in kinds {
            var single = fields
            single["kind"] = kind
            let alone = try live.call("sweep", single).mapValue!
            let result = try XCTUnwrap(reply["results"]?[kind.stringValue!]?.mapValue)
            // All but the reply's envelope and the times.
            let envelope: Set = ["id", "status", "job", "timing", "seconds"]
            XCTAssertEqual(Set(result.keys), Set(alone.keys).subtracting(envelope).union(["seconds"]), "\(kind)")
            for (key, value) in alone where !envelope.contains(key) { XCTAssertEqual(result[key], value, "\(kind) \(key)") }
        }
    }

    /// compare: the exact matrix is the activation sweep's, beside the estimates, with their
    /// Pearson correlation and the cell where they differ most.
    func testCompareReturnsTheExactSweepAndTheCorrelation() throws {
        let live = try daemon()
        var fields = request(["residual", "heads", "neurons"])
        fields["compare"] = true
        var interim = [MessageValue]()
        let reply = try live.client().call("sweep", fields) { interim.append($0) }.body
        XCTAssertEqual(interim.last { $0["status"] == "progress" }?["total"], 10, "two passes and three exact sweeps of two layers")
        for kind in ["residual", "heads", "neurons"] {
            let result = try XCTUnwrap(reply["results"]?[kind])
            let exact = try live.call("sweep", request(.string(kind), method: "activation"))
            XCTAssertEqual(Self.matrix(result["exact"]), Self.matrix(exact), kind)
            let (a, e) = (Self.matrix(result).joined().map(Double.init), Self.matrix(exact).joined().map(Double.init))
            let (ma, me) = (a.reduce(0, +) / Double(a.count), e.reduce(0, +) / Double(e.count))
            let covariance = zip(a, e).map { ($0 - ma) * ($1 - me) }.reduce(0, +)
            let correlation = covariance / (a.map { ($0 - ma) * ($0 - ma) }.reduce(0, +) * e.map { ($0 - me) * ($0 - me) }.reduce(0, +)).squareRoot()
            XCTAssertEqual(result["comparison"]?["correlation"]?.doubleValue ?? .nan, correlation, accuracy: 1e-6, kind)
            XCTAssertGreaterThan(correlation, 0.5, "\(kind): attribution tracks the exact sweep on this pair")
            let differences = zip(a, e).map { abs($0 - $1) }
            let worst = differences.indices.max { differences[$0] < differences[$1] }!
            let columns = Self.matrix(exact)[0].count
            let cell = try XCTUnwrap(result["comparison"]?["worst"])
            XCTAssertEqual(cell["row"], MessageValue(worst / columns), kind)
            XCTAssertEqual(cell["col"], MessageValue(worst % columns), kind)
            XCTAssertEqual(cell["attribution"]?.doubleValue ?? .nan, a[worst], accuracy: 1e-6)
            XCTAssertEqual(cell["exact"]?.doubleValue ?? .nan, e[worst], accuracy: 1e-6)
            XCTAssertEqual(cell["difference"]?.doubleValue ?? .nan, a[worst] - e[worst], accuracy: 1e-6)
        }
        XCTAssertNil(try live.call("sweep", request("heads"))["comparison"], "no comparison unless asked")
    }

    func testBadFieldsAreTyped() throws {
        let live = try daemon()
        func expect(_ code: ErrorCode, _ field: String, mentioning words: String? = nil, _ edit: (inout [String: MessageValue]) -> Void,
                    file: StaticString = #filePath, line: UInt = #line) throws {
            var fields = request("residual")
            edit(&fields)
            let error = try live.expectError(code, "sweep", fields, file: file, line: line)
            XCTAssertEqual(error.field, field, error.message, file: file, line: line)
            if let words { XCTAssertTrue(error.message.contains(words), error.message, file: file, line: line) }
        }
        try expect(.badRequest, "method", mentioning: "activation, attribution") { $0["method"] = "gradient" }
        try expect(.badRequest, "method") { $0["method"] = 2 }
        try expect(.badRequest, "kind", mentioning: "method attribution") { $0["method"] = "activation"; $0["kind"] = ["residual", "heads"] }
        try expect(.badRequest, "kind") { $0["kind"] = [] }
        try expect(.badRequest, "kind.1") { $0["kind"] = ["residual", "neuron"] }
        try expect(.badRequest, "kind.1", mentioning: "twice") { $0["kind"] = ["heads", "heads"] }
        try expect(.badRequest, "kind.0") { $0["kind"] = [3] }
        try expect(.badRequest, "compare", mentioning: "method attribution") { $0["method"] = "activation"; $0["compare"] = true }
        try expect(.badRequest, "compare") { $0["compare"] = "yes" }
        try expect(.badRequest, "neuron_positions", mentioning: "last, sum") { $0["kind"] = "neurons"; $0["neuron_positions"] = "first" }
        try expect(.badRequest, "neuron_positions", mentioning: "kind neurons") { $0["neuron_positions"] = "sum" }
        try expect(.badRequest, "method", mentioning: "ablate") { $0["intervention"] = "ablate"; $0["params"] = ["mode": "zero"] }
        try expect(.badRequest, "intervention", mentioning: "neurons") {
            $0["method"] = "activation"; $0["kind"] = "neurons"; $0["intervention"] = "ablate"; $0["params"] = ["mode": "zero"]
        }
        // The exact neurons sweep is one batched pass of a full invocation per neuron: two pairs
        // of 64 tokens are 2 x (2 + 2 x 256) x 64 = 65,792 rows, over the 65,536 of one pass.
        let long = (0..<64).map { $0 * 7 % 512 }
        var other = long
        other[10] = 3
        let pairs: MessageValue = .array(Array(repeating: ["clean": MessageValue(long), "corrupted": MessageValue(other)], count: 2))
        func twoLongPairs(_ fields: inout [String: MessageValue]) {
            fields["pairs"] = pairs
            fields.removeValue(forKey: "clean")
            fields.removeValue(forKey: "corrupted")
            fields["kind"] = "neurons"
        }
        try expect(.tooLarge, "pairs", mentioning: "method attribution") { twoLongPairs(&$0); $0["method"] = "activation" }
        try expect(.tooLarge, "compare", mentioning: "neurons") { twoLongPairs(&$0); $0["compare"] = true }
        // The backward's bound, as a trace's, against a daemon that allows 64 KiB.
        let small = try LiveDaemon { $0.maxBackwardBytes = 1 << 16 }
        defer { small.stop() }
        _ = try small.call("models.load", ["name": "gpt2", "source": .string(Fixtures.gpt2Tiny)])
        let refused = try small.expectError(.tooLarge, "sweep", request("heads"))
        XCTAssertEqual(refused.field, "clean")
        XCTAssertTrue(refused.message.contains("--max-backward-mb"), refused.message)
        // The attribution passes themselves: 1,025 pairs of 64 tokens are 65,600 slots a pass.
        try expect(.tooLarge, "pairs", mentioning: "attribution") { fields in
            twoLongPairs(&fields)
            fields["pairs"] = .array(Array(repeating: ["clean": MessageValue(long), "corrupted": MessageValue(other)], count: 1025))
        }
    }
}
