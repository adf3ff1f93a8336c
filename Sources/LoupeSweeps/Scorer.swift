import Foundation
import LoupeModels
import LoupeTensor

/// Computes a sweep's metric from final hidden states at the last position, unembedding no
/// more of the vocabulary than the metric reads.
struct Scorer {
    let metric: SweepMetric
    let model: any LanguageModel
    /// For a logit difference: the unembedding of the two answers alone.
    private let answers: Linear?
    /// For KL: the clean run's next-token log-probabilities.
    private let cleanLogProbabilities: [Double]?

    init(model: any LanguageModel, metric: SweepMetric, cleanLast: Tensor) throws {
        self.model = model
        self.metric = metric
        switch metric {
        case .logitDifference(let answer, let wrong):
            answers = Scorer.unembedding(of: [answer, wrong], in: model.unembedding)
            cleanLogProbabilities = nil
        case .logProbability:
            answers = nil
            cleanLogProbabilities = nil
        case .klFromClean:
            answers = nil
            cleanLogProbabilities = Scorer.logSoftmax(model.unembedding(cleanLast))[0]
        }
    }

    /// The metric for each row of `final` [rows, hidden].
    func score(_ final: Tensor) throws -> [Float] {
        switch metric {
        case .logitDifference:
            let logits = answers!(final)
            return (0..<final.rowCount).map { logits[$0, 0] - logits[$0, 1] }
        case .logProbability(let answer):
            return Scorer.logSoftmax(model.unembedding(final)).map { Float($0[answer]) }
        case .klFromClean:
            let clean = cleanLogProbabilities!
            return Scorer.logSoftmax(model.unembedding(final)).map { patched in
                Float(zip(clean, patched).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) })
            }
        }
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
