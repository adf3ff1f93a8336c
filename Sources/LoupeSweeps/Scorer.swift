import Foundation
import LoupeModels
import LoupeTensor

/// Computes each pair's metric from final hidden states at the last position, unembedding
/// no more of the vocabulary than the metrics read.
struct Scorer {
    let metrics: [SweepMetric]
    let model: any LanguageModel
    /// For logit differences: the unembedding of every answer token alone, and where each
    /// token's row is.
    private let answers: Linear?
    private let answerRow: [Int: Int]
    /// For KL: each pair's clean next-token log-probabilities.
    let cleanLogProbabilities: [[Double]?]

    /// `cleanFinal`: each pair's clean run, [pairs, hidden].
    init(model: any LanguageModel, metrics: [SweepMetric], cleanFinal: Tensor) throws {
        self.model = model
        self.metrics = metrics
        let ids = Array(Set(metrics.flatMap { metric -> [Int] in
            if case .logitDifference = metric { return metric.answers }
            return []
        })).sorted()
        answers = ids.isEmpty ? nil : Scorer.unembedding(of: ids, in: model.unembedding)
        answerRow = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        cleanLogProbabilities = metrics.enumerated().map { pair, metric in
            guard metric == .klFromClean else { return nil }
            return Scorer.logSoftmax(Scorer.logits(model, model.unembedding, cleanFinal.slice(axis: 0, pair..<(pair + 1)).contiguous()))[0]
        }
    }

    /// The metric of each row of `final` [rows, hidden], row i scored by pair `pairs[i]`'s metric.
    func score(_ final: Tensor, pairs: [Int]) throws -> [Float] {
        precondition(final.rowCount == pairs.count, "one pair per row")
        let answerLogits = answers.map { Scorer.logits(model, $0, final) }
        // The full vocabulary only for the rows whose metric needs a softmax.
        let needsVocabulary = pairs.indices.filter { row in
            if case .logitDifference = metrics[pairs[row]] { return false }
            return true
        }
        var logProbabilities = [Int: [Double]]()
        if !needsVocabulary.isEmpty {
            let rows = stackRows(needsVocabulary.map { final.slice(axis: 0, $0..<($0 + 1)) })
            for (row, values) in zip(needsVocabulary, Scorer.logSoftmax(Scorer.logits(model, model.unembedding, rows))) { logProbabilities[row] = values }
        }
        return pairs.enumerated().map { row, pair in
            switch metrics[pair] {
            case .logitDifference(let answer, let wrong):
                return answerLogits![row, answerRow[answer]!] - answerLogits![row, answerRow[wrong]!]
            case .logProbability(let answer): return Float(logProbabilities[row]![answer])
            case .klFromClean:
                return Float(zip(cleanLogProbabilities[pair]!, logProbabilities[row]!).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) })
            }
        }
    }

    /// `head` (lm_head or some of its rows) on final hidden states, soft-capped as the model's logits are.
    static func logits(_ model: any LanguageModel, _ head: Linear, _ final: Tensor) -> Tensor {
        let logits = head(final)
        if let cap = model.logitSoftcap { softcapInPlace(logits, cap) }
        return logits
    }

    /// The rows of lm_head for `ids`, as a small output-major map.
    static func unembedding(of ids: [Int], in head: Linear) -> Linear {
        let hidden = head.inputSize
        let weight = Tensor(zeros: [ids.count, hidden])
        for (row, id) in ids.enumerated() {
            let vector = head.layout == .outputMajor ? head.weight.select(axis: 0, id) : head.weight.select(axis: 1, id)
            weight.select(axis: 0, row).assign(from: vector)
        }
        return Linear(weight: weight, layout: .outputMajor)
    }

    /// Row-wise log-softmax of logits [rows, vocabulary], in Double.
    static func logSoftmax(_ logits: Tensor) -> [[Double]] {
        (0..<logits.rowCount).map { row in
            let values = logits.select(axis: 0, row).toArray().map(Double.init)
            let maximum = values.max() ?? 0
            let logSum = log(values.reduce(0.0) { $0 + exp($1 - maximum) }) + maximum
            return values.map { $0 - logSum }
        }
    }
}

extension SweepMetric {
    /// The metric of one row of logits [vocabulary] as LoupeTensor ops, which a gradient tape
    /// records: a one-element tensor. KL reads `cleanLogProbabilities`.
    func differentiable(_ logits: Tensor, cleanLogProbabilities: [Double]?) -> Tensor {
        switch self {
        case .logitDifference(let answer, let wrong):
            return TensorMath.binary(logits.select(axis: 0, answer), logits.select(axis: 0, wrong), .sub)
        case .logProbability(let answer):
            return TensorMath.softmax(logits, dim: 0, log: true).select(axis: 0, answer)
        case .klFromClean:
            // Σ p_clean · (log p_clean - log p_edited)
            let clean = cleanLogProbabilities!
            let logP = Tensor(shape: [clean.count], values: clean.map(Float.init))
            let p = Tensor(shape: [clean.count], values: clean.map { Float(exp($0)) })
            let gap = TensorMath.binary(logP, TensorMath.softmax(logits, dim: 0, log: true), .sub)
            return TensorMath.reduce(TensorMath.binary(p, gap, .mul), .sum, dims: nil, keepdim: false)
        }
    }
}
