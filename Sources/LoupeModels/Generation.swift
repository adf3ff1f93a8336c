import Foundation
import LoupeTensor

/// How a generation picks each token: greedy, or sampled as `Sampling` documents.
public struct GenerationSettings: Sendable {
    public var maxNewTokens: Int
    /// Nil: greedy (the largest logit, the lowest id on ties).
    public var sampling: Sampling?
    /// The model's end-of-sequence ids: a row that picks one stops (finish `eos`).
    public var eos: Set<Int>
    /// More ids that stop a row (finish `stop`); the stop token is kept in the output.
    public var stopTokens: Set<Int>

    public init(maxNewTokens: Int, sampling: Sampling? = nil, eos: Set<Int> = [], stopTokens: Set<Int> = []) {
        self.maxNewTokens = maxNewTokens
        self.sampling = sampling
        self.eos = eos
        self.stopTokens = stopTokens
    }
}

/// Why a row stopped.
public enum FinishReason: String, Sendable {
    case eos, stop, length
}

/// Runs a batch of prompts forward one token at a time, as HF's `generate` does.
///
/// Step 0 runs the prompts as one left-padded batch and fills a `DecodeCache`; step s >= 1
/// runs only the token each row chose at step s - 1, attending to the cache. Step s chooses
/// new token s of every row. A row that stopped keeps running, fed the first EOS id (as HF
/// feeds the pad id: what it computes is not part of its output), until every row stopped
/// or `maxNewTokens` steps ran.
public final class Generation {
    public let model: any LanguageModel
    public let batch: TokenBatch
    public let settings: GenerationSettings
    public let cache: DecodeCache
    /// Passes run so far: the next step's number.
    public private(set) var step = 0
    /// The new ids of each row, up to and including the one it stopped at.
    public private(set) var tokens: [[Int]]
    /// Each row's reason for stopping, nil while it runs.
    public private(set) var finish: [FinishReason?]
    private var generators: [SplitMix64]
    private var fed: [Int]

    /// Checks the prompts (`ModelError`s as a forward pass's) and the context: the longest
    /// prompt + `maxNewTokens` must fit (`ModelError.tooLong`).
    public init(model: any LanguageModel, prompts: [[Int]], settings: GenerationSettings) throws {
        precondition(settings.maxNewTokens >= 1, "a generation makes at least one token")
        batch = TokenBatch(prompts)
        try model.validate(batch)
        let total = batch.length + settings.maxNewTokens
        if total > model.dimensions.context { throw ModelError.tooLong(total, limit: model.dimensions.context) }
        self.model = model
        self.settings = settings
        // The last token is chosen, never run.
        cache = DecodeCache(layers: model.dimensions.layers, rows: batch.rows, capacity: total - 1)
        tokens = Array(repeating: [], count: batch.rows)
        finish = Array(repeating: nil, count: batch.rows)
        generators = (0..<batch.rows).map { SplitMix64(seed: settings.sampling?.seed ?? 0, invocation: $0) }
        fed = []
    }

    /// True once every row stopped or `maxNewTokens` steps ran.
    public var isDone: Bool { step >= settings.maxNewTokens || finish.allSatisfy { $0 != nil } }

    /// What one step computed.
    public struct Step {
        /// The step's logits at each row's last position, as the hooks left them: [rows, vocab].
        public let logits: Tensor
        /// The token each row chose; nil for a row that had stopped before this step.
        public let chosen: [Int?]
    }

    /// Runs the next step with `hooks` and chooses every running row's token. `logits`: where
    /// the unembedding runs (`.all` shows the hooks every position of the prompts at step 0;
    /// a later step has one position). `cancelled` is checked before each layer.
    public func next(hooks: (any ForwardHooks)? = nil, logits which: LogitRows = .last,
                     cancelled: CancellationCheck? = nil) throws -> Step {
        precondition(!isDone, "the generation is over")
        let count = step == 0 ? batch.length : 1
        let ids = step == 0 ? batch.paddedIDs() : fed
        let pass = ForwardPass(appending: ids, count: count, to: cache, padding: batch.padding, hooks: hooks, cancelled: cancelled)
        let final = try model.finalNorm(try model.run(layers: 0..<model.dimensions.layers, on: try model.embed(pass), pass), pass)
        let all = try model.unembed(final, which == .all ? .all : .last, pass)
        cache.commit(count)
        // Each row's last position: the last column of the left-padded batch.
        let last = all.select(axis: 1, all.shape[1] - 1).contiguous()
        var chosen = [Int?](repeating: nil, count: batch.rows)
        fed = Array(repeating: settings.eos.min() ?? 0, count: batch.rows)
        for row in 0..<batch.rows {
            let scores = Array(UnsafeBufferPointer(start: last.data + row * last.columnCount, count: last.columnCount))
            let token = settings.sampling.map { $0.choose(scores, &generators[row]) } ?? Sampling.argmax(scores)
            guard finish[row] == nil else { continue }
            fed[row] = token
            chosen[row] = token
            tokens[row].append(token)
            if settings.eos.contains(token) { finish[row] = .eos } else if settings.stopTokens.contains(token) { finish[row] = .stop }
        }
        step += 1
        if step == settings.maxNewTokens { finish = finish.map { $0 ?? .length } }
        return Step(logits: last, chosen: chosen)
    }

    /// Runs every step without hooks; returns the new ids of each row.
    public func run(cancelled: CancellationCheck? = nil) throws -> [[Int]] {
        while !isDone { _ = try next(cancelled: cancelled) }
        return tokens
    }
}

/// Sampled decoding, as PROTOCOL.md documents it: the row's float32 logits divided by
/// `temperature`; the `topK` largest kept (0: all; ties: the lower id first); softmax in
/// float64; of those sorted by probability (descending, ties: the lower id first), the
/// smallest prefix whose sum reaches `topP` kept (at least one; 1 keeps all); renormalised;
/// then u in [0, 1) from the row's `SplitMix64`, and the first kept token whose cumulative
/// probability exceeds u.
public struct Sampling: Sendable, Equatable {
    public var temperature: Float
    public var topK: Int
    public var topP: Double
    public var seed: Int

    public init(temperature: Float = 1, topK: Int = 50, topP: Double = 1, seed: Int = 0) {
        precondition(temperature > 0 && topK >= 0 && topP > 0 && topP <= 1)
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    /// The first index of the largest score.
    public static func argmax(_ scores: [Float]) -> Int {
        var best = 0
        for i in scores.indices where scores[i] > scores[best] { best = i }
        return best
    }

    /// The token for one row's `logits`, drawing from `generator`.
    public func choose(_ logits: [Float], _ generator: inout SplitMix64) -> Int {
        let scaled = logits.map { $0 / temperature }
        var order = Array(scaled.indices).sorted { scaled[$0] > scaled[$1] || (scaled[$0] == scaled[$1] && $0 < $1) }
        if topK > 0 && topK < order.count { order.removeSubrange(topK...) }
        let top = Double(scaled[order[0]])
        var probabilities = order.map { exp(Double(scaled[$0]) - top) }
        let total = probabilities.reduce(0, +)
        probabilities = probabilities.map { $0 / total }
        if topP < 1 {
            var sum = 0.0, keep = 0
            while keep < probabilities.count {
                sum += probabilities[keep]
                keep += 1
                if sum >= topP { break }
            }
            order.removeSubrange(keep...)
            probabilities.removeSubrange(keep...)
            probabilities = probabilities.map { $0 / sum }
        }
        let u = generator.nextDouble()
        var cumulative = 0.0
        for (token, p) in zip(order, probabilities) {
            cumulative += p
            if cumulative > u { return token }
        }
        return order[order.count - 1]  // u at the rounding error under 1
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): the generator of invocation i starts from
/// seed XOR (i · 0x9E3779B97F4A7C15), both as 64-bit two's complement; each draw adds
/// 0x9E3779B97F4A7C15 to the state and mixes it; a double in [0, 1) is the draw's top 53
/// bits times 2⁻⁵³.
public struct SplitMix64: Sendable {
    private var state: UInt64

    public init(seed: Int, invocation: Int) {
        state = UInt64(bitPattern: Int64(seed)) ^ (UInt64(invocation) &* 0x9E37_79B9_7F4A_7C15)
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1p-53 }
}
