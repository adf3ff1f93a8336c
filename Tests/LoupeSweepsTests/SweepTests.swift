import Foundation
import GPT2
import Llama
import LoupeModels
import LoupeSweeps
import LoupeTensor
import XCTest

let registry: ArchitectureRegistry = {
    let registry = ArchitectureRegistry()
    registry.register(GPT2Architecture.self)
    registry.register(LlamaArchitecture.self)
    return registry
}()

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").path
let models = ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? (NSHomeDirectory() + "/.cache/loupe/models")

/// Patches chosen cells of a batch, one row per cell, at the plain sites: the tutorial's
/// batched trace, with nothing skipped or reused.
final class PlainPatches: ForwardHooks {
    var edits: [Site: [(row: Int, apply: (Tensor) -> Void)]] = [:]
    func wants(_ site: Site) -> Bool { edits[site] != nil }
    func visit(_ site: Site, _ value: inout Tensor) throws {
        for edit in edits[site]! { edit.apply(value.select(axis: 0, edit.row)) }
    }
}

/// Every sweep against the plain path: each patched cell as its own invocation of a full
/// forward pass, the metric read from the full logits.
final class SweepTests: XCTestCase {
    func reference(_ model: any LanguageModel, _ request: SweepRequest, layers: [Int]) throws -> [[Float]] {
        let length = request.clean.count
        let columns = request.kind == .residual ? length : model.dimensions.heads
        let sites = layers.map { Site(request.kind == .residual ? "blocks.\($0).resid_post" : "blocks.\($0).attn.z", .output) }
        let cleanRecord = ActivationRecorder(sites)
        let cleanLogits = try model.forward(TokenBatch([request.clean]), hooks: cleanRecord, logits: .last)
        let hooks = PlainPatches()
        var row = 0
        for (site, _) in zip(sites, layers) {
            let clean = cleanRecord.values[site]!.select(axis: 0, 0)  // [length, ...]
            for column in 0..<columns {
                hooks.edits[site, default: []].append((row, { value in
                    switch request.kind {
                    case .residual: value.select(axis: 0, column).assign(from: clean.select(axis: 0, column))
                    case .heads: value.select(axis: 1, column).assign(from: clean.select(axis: 1, column))
                    }
                }))
                row += 1
            }
        }
        let batch = TokenBatch([request.corrupted, request.corrupted] + Array(repeating: request.corrupted, count: row))
        let logits = try model.forward(batch, hooks: Offset(hooks, by: 2), logits: .last)
        func metric(_ l: Tensor) -> Float {
            let values = l.reshaped([-1]).toArray().map(Double.init)
            let m = values.max()!
            let logSum = log(values.reduce(0.0) { $0 + exp($1 - m) }) + m
            switch request.metric {
            case .logitDifference(let a, let b): return Float(values[a] - values[b])
            case .logProbability(let a): return Float(values[a] - logSum)
            case .klFromClean:
                let c = cleanLogits.reshaped([-1]).toArray().map(Double.init)
                let cm = c.max()!
                let cLog = log(c.reduce(0.0) { $0 + exp($1 - cm) }) + cm
                return Float(zip(c, values).reduce(0.0) { $0 + exp($1.0 - cLog) * (($1.0 - cLog) - ($1.1 - logSum)) })
            }
        }
        let cleanValue = metric(cleanLogits), corruptedValue = metric(logits.select(axis: 0, 0))
        return (0..<layers.count).map { l in
            (0..<columns).map { c in
                let value = metric(logits.select(axis: 0, 2 + l * columns + c))
                return request.normalized ? (value - corruptedValue) / (cleanValue - corruptedValue) : value
            }
        }
    }

    func check(_ model: any LanguageModel, _ request: SweepRequest, layers: [Int]? = nil, tolerance: Float = 1e-4,
               file: StaticString = #filePath, line: UInt = #line) throws -> SweepResult {
        let result = try PatchingSweep(model: model).run(request)
        let layers = layers ?? Array(0..<model.dimensions.layers)
        let expected = try reference(model, request, layers: layers)
        for (index, layer) in layers.enumerated() {
            for (column, value) in expected[index].enumerated() {
                XCTAssertEqual(result.values[layer][column], value, accuracy: tolerance,
                               "\(request.kind) layer \(layer), column \(column)", file: file, line: line)
            }
        }
        XCTAssertLessThan(result.tokenLayers, result.plainTokenLayers, file: file, line: line)
        return result
    }

    let clean = [5, 17, 300, 42, 8, 99, 23, 61, 400]
    let corrupted = [5, 17, 300, 42, 8, 7, 23, 61, 400]

    func testFixtureSweepsMatchThePlainPath() throws {
        for name in ["gpt2-tiny", "llama-tiny", "llama-tiny-untied"] {
            let model = try LoadedModel.load(fixtures + "/models/" + name, registry: registry).model
            for kind in SweepKind.allCases {
                for metric in [SweepMetric.logitDifference(answer: 3, wrong: 11), .logProbability(answer: 3), .klFromClean] {
                    for normalized in [true, false] {
                        _ = try check(model, SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: metric, normalized: normalized))
                    }
                }
            }
        }
    }

    func testPositionsBeforeTheFirstDifferenceAreExactlyUnpatched() throws {
        let model = try LoadedModel.load(fixtures + "/models/llama-tiny", registry: registry).model
        let result = try PatchingSweep(model: model).run(SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                                                      metric: .logitDifference(answer: 3, wrong: 11)))
        XCTAssertEqual(result.firstDifference, 5)
        for row in result.values { XCTAssertEqual(Array(row[..<5]), Array(repeating: 0, count: 5)) }
        // Patching the last position of the last layer gives the clean run itself.
        XCTAssertEqual(result.values[model.dimensions.layers - 1][clean.count - 1], 1, accuracy: 1e-5)
    }

    func testBadRequests() throws {
        let model = try LoadedModel.load(fixtures + "/models/gpt2-tiny", registry: registry).model
        let sweep = PatchingSweep(model: model)
        let metric = SweepMetric.logitDifference(answer: 3, wrong: 11)
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: [1, 2], kind: .residual, metric: metric))) {
            XCTAssertEqual($0 as? SweepError, .lengthsDiffer(clean: 9, corrupted: 2))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: clean, kind: .residual, metric: metric))) {
            XCTAssertEqual($0 as? SweepError, .identicalPrompts)
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: corrupted, kind: .heads,
                                                        metric: .logitDifference(answer: 3, wrong: 512)))) {
            XCTAssertEqual($0 as? SweepError, .tokenOutOfRange(512))
        }
    }

    /// The tutorial's two experiments on SmolLM2, on a sample of layers (the plain path is
    /// slow in a debug build): every sampled cell as its own full invocation.
    func testSmolLM2TutorialSweepsMatchThePlainPath() throws {
        let path = models + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { return XCTFail("\(path) is missing: run scripts/fetch-models.sh") }
        let loaded = try LoadedModel.load(path, registry: registry)
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        let clean = tokenizer.encode("After John and Mary went to the store, Mary gave a bottle of milk to")
        let corrupted = tokenizer.encode("After John and Mary went to the store, John gave a bottle of milk to")
        let metric = SweepMetric.logitDifference(answer: 2322, wrong: 5099)
        let residual = try check(loaded.model, SweepRequest(clean: clean, corrupted: corrupted, kind: .residual, metric: metric),
                                 layers: [0, 14, 29])
        XCTAssertEqual(residual.clean, 5.137, accuracy: 2e-3)
        XCTAssertEqual(residual.corrupted, -3.829, accuracy: 2e-3)
        XCTAssertEqual(residual.values[0].count, 16)
        _ = try check(loaded.model, SweepRequest(clean: clean, corrupted: corrupted, kind: .heads, metric: metric), layers: [0, 29])
    }
}

/// Hooks for rows 2... of a batch whose first two rows are the clean and corrupted runs.
final class Offset: ForwardHooks {
    let inner: PlainPatches
    let offset: Int
    init(_ inner: PlainPatches, by offset: Int) {
        self.inner = inner
        self.offset = offset
    }
    func wants(_ site: Site) -> Bool { inner.wants(site) }
    func visit(_ site: Site, _ value: inout Tensor) throws {
        for edit in inner.edits[site]! { edit.apply(value.select(axis: 0, edit.row + offset)) }
    }
}
