import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Generation against HF's `generate` (scripts/make_generation_fixtures.py): the same tokens
/// and, at every step, the same logits, for one prompt, a left-padded batch of two, and an
/// edit at every step.
final class GenerationTests: XCTestCase {
    static let fixtures = ["gpt2-tiny", "llama-tiny", "llama-tiny-untied", "llama3-tiny", "qwen2-tiny", "qwen3-tiny",
                           "mistral-tiny", "pythia-tiny", "pythia-tiny-sequential", "gemma2-tiny", "gemma3-tiny"]

    struct Golden {
        let loaded: LoadedModel
        let json: [String: Any]
        let tensors: SafetensorsFile

        init(_ name: String) throws {
            let directory = fixturesDirectory + "/models/" + name
            loaded = try LoadedModel.load(directory, registry: testRegistry)
            json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/generation.json"))) as! [String: Any]
            tensors = try SafetensorsFile(path: directory + "/generation.safetensors")
        }

        subscript(_ path: String...) -> Any {
            var value: Any = json
            for key in path { value = (value as! [String: Any])[key]! }
            return value
        }

        var settings: GenerationSettings {
            GenerationSettings(maxNewTokens: json["new_tokens"] as! Int, eos: Set(loaded.eosTokenIDs))
        }
    }

    /// Runs `prompts` greedily and checks each step's tokens and running rows' logits against
    /// `expected` [steps, rows, vocab].
    private func check(_ g: Golden, _ prompts: [[Int]], tokens: [[Int]], logits expected: Tensor, hooks: (any ForwardHooks)? = nil,
                       _ what: String) throws {
        let generation = try Generation(model: g.loaded.model, prompts: prompts, settings: g.settings)
        var step = 0
        while !generation.isDone {
            let out = try generation.next(hooks: hooks)
            for row in prompts.indices where out.chosen[row] != nil {
                let want = expected.select(axis: 0, step).select(axis: 0, row)
                assertClose(out.logits.select(axis: 0, row), want, tolerance: 1e-4, "\(what): logits of row \(row) at step \(step)")
            }
            step += 1
        }
        XCTAssertEqual(generation.tokens, tokens, what)
        XCTAssertEqual(generation.step, expected.shape[0], "\(what): steps")
    }

    func testGreedyMatchesHF() throws {
        for name in Self.fixtures {
            let g = try Golden(name)
            XCTAssertEqual(g.loaded.eosTokenIDs, g["eos"] as! [Int], "\(name): EOS ids")
            let single = g["single", "prompt"] as! [Int]
            let singleLogits = try g.tensors.tensor("single.logits")
            try check(g, [single], tokens: [g["single", "tokens"] as! [Int]],
                      logits: singleLogits.reshaped([singleLogits.shape[0], 1, -1]), "\(name) alone")
            try check(g, g["batch", "prompts"] as! [[Int]], tokens: g["batch", "tokens"] as! [[Int]],
                      logits: try g.tensors.tensor("batch.logits"), "\(name) padded batch")
        }
    }

    /// A hook adding a vector to layer 0's output at every position of every step, as a torch
    /// forward hook does.
    final class AddToLayer: ForwardHooks {
        let site = Site("blocks.0.resid_post", .output)
        let vector: Tensor
        init(_ vector: Tensor) { self.vector = vector }
        func wants(_ site: Site) -> Bool { site == self.site }
        func visit(_ site: Site, _ value: inout Tensor) throws {
            let width = vector.count
            let rows = value.count / width
            let flat = value.reshaped([rows, width])
            for row in 0..<rows {
                for i in 0..<width { flat.data[row * width + i] += vector.data[i] }
            }
        }
    }

    func testEditAtEveryStepMatchesTorchHooks() throws {
        for name in Self.fixtures {
            let g = try Golden(name)
            let logits = try g.tensors.tensor("edit.logits")
            try check(g, [g["single", "prompt"] as! [Int]], tokens: [g["edit", "tokens"] as! [Int]],
                      logits: logits.reshaped([logits.shape[0], 1, -1]), hooks: AddToLayer(try g.tensors.tensor("edit.vector")),
                      "\(name) edited")
        }
    }

    func testSamplingRepeatsWithItsSeed() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/llama-tiny", registry: testRegistry).model
        func sample(_ seed: Int, topK: Int = 50, topP: Double = 0.9) throws -> [[Int]] {
            let settings = GenerationSettings(maxNewTokens: 12, sampling: Sampling(temperature: 2, topK: topK, topP: topP, seed: seed))
            return try Generation(model: model, prompts: [[5, 6, 7], [9, 10, 11, 12, 13]], settings: settings).run()
        }
        let first = try sample(7)
        XCTAssertEqual(try sample(7), first)
        XCTAssertNotEqual(try sample(8), first)
        XCTAssertNotEqual(first[0], first[1], "each invocation draws from a generator of its own")
        // One candidate left is greedy.
        let greedy = try Generation(model: model, prompts: [[5, 6, 7], [9, 10, 11, 12, 13]], settings: GenerationSettings(maxNewTokens: 12)).run()
        XCTAssertEqual(try sample(7, topK: 1), greedy)
        XCTAssertEqual(try sample(3, topP: 1e-9), greedy)
    }

    func testSamplingFollowsTheDocumentedAlgorithm() {
        // Logits 2, 1, 1, 0 over 4 tokens: top_k 3 keeps ids 0, 1, 2 (id 1 before id 2 on the tie).
        var generator = SplitMix64(seed: 42, invocation: 0)
        var copy = generator
        let u = copy.nextDouble()
        let kept = [2.0, 1.0, 1.0].map { exp($0 - 2) }
        let probabilities = kept.map { $0 / kept.reduce(0, +) }
        let expected = probabilities[0] > u ? 0 : probabilities[0] + probabilities[1] > u ? 1 : 2
        let sampling = Sampling(temperature: 1, topK: 3, topP: 1, seed: 42)
        XCTAssertEqual(sampling.choose([2, 1, 1, 0], &generator), expected)
        // SplitMix64's first output for state 0 (the published reference value).
        var zero = SplitMix64(seed: 0, invocation: 0)
        XCTAssertEqual(zero.next(), 0xE220_A839_7B1D_CDAF)
    }

    func testCancellationStopsBetweenLayers() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry).model
        let generation = try Generation(model: model, prompts: [[1, 2, 3]], settings: GenerationSettings(maxNewTokens: 5))
        _ = try generation.next()
        let calls = Counter()
        XCTAssertThrowsError(try generation.next(cancelled: { calls.increment() >= 2 })) { error in
            XCTAssertEqual(error as? ModelError, .cancelled)
        }
        XCTAssertEqual(generation.step, 1)
    }

    func testContextBoundsPromptAndNewTokens() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry).model
        XCTAssertThrowsError(try Generation(model: model, prompts: [Array(repeating: 1, count: 60)], settings: GenerationSettings(maxNewTokens: 5))) {
            XCTAssertEqual($0 as? ModelError, .tooLong(65, limit: 64))
        }
        XCTAssertNoThrow(try Generation(model: model, prompts: [Array(repeating: 1, count: 60)], settings: GenerationSettings(maxNewTokens: 4)))
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() -> Int { lock.withLock { count += 1; return count } }
}
