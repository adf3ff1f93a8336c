import LoupeModels
import LoupeTensor
import LoupeTokenizers
import LoupeWire

/// Runs a checked `forward` request on a worker thread and builds its reply fields.
struct ForwardRunner: Sendable {
    let spec: ForwardSpec
    let loaded: LoadedModel
    /// Called after every layer; throwing `ModelError.cancelled` is the model's job.
    let onLayer: @Sendable () -> Bool

    func run() throws -> [String: MessageValue] {
        let batch = TokenBatch(spec.sequences)
        let recorder = spec.save.isEmpty ? nil : ActivationRecorder(spec.save)
        let rows: LogitRows = spec.topK == 0 && !spec.wantsLogits ? .none : (spec.onlyLastPositions ? .last : .all)
        let output = try loaded.model.forward(batch, hooks: recorder, logits: rows, cancelled: onLayer).contiguous()

        var fields: [String: MessageValue] = [
            "tokens": .array(spec.sequences.map { MessageValue($0) }),
            "positions": .array(spec.positions.map { MessageValue($0) }),
        ]
        if rows != .none {
            let vocabulary = output.shape[2]
            // The logits of row r at its own position p sit in column padding + p (0 with `.last`).
            func logits(_ row: Int, _ position: Int) -> UnsafeBufferPointer<Float> {
                let column = rows == .last ? 0 : batch.padding[row] + position
                return UnsafeBufferPointer(start: output.data + (row * output.shape[1] + column) * vocabulary, count: vocabulary)
            }
            if spec.topK > 0 {
                fields["top"] = .array(spec.positions.enumerated().map { row, positions in
                    .array(positions.map { position in .array(top(logits(row, position), k: spec.topK)) })
                })
            }
            if spec.wantsLogits {
                var values = [Float]()
                values.reserveCapacity(spec.positions.count * spec.positions[0].count * vocabulary)
                for (row, positions) in spec.positions.enumerated() {
                    for position in positions { values.append(contentsOf: logits(row, position)) }
                }
                let shape = [spec.positions.count, spec.positions[0].count, vocabulary]
                fields["logits"] = try WireTensor(shape: shape, floats: values).messageValue
            }
        }
        if let recorder {
            var saved = [String: MessageValue]()
            for site in spec.save { saved[site.description] = recorder.values[site].map { WireTensor($0).messageValue } ?? .null }
            fields["saved"] = .map(saved)
            fields["padding"] = MessageValue(batch.padding)
        }
        return fields
    }

    /// The k largest logits, best first, as `{id, token, logit}`.
    private func top(_ logits: UnsafeBufferPointer<Float>, k: Int) -> [MessageValue] {
        TopK.indices(logits, k: k).map { id in
            ["id": MessageValue(id), "logit": MessageValue(logits[id]),
             "token": loaded.tokenizer.map { MessageValue.string($0.decode([id])) } ?? .null]
        }
    }
}

/// Selecting the k largest of many values without sorting them all.
enum TopK {
    /// Indices of the k largest values, largest first; ties go to the lower index, NaN last.
    static func indices(_ values: UnsafeBufferPointer<Float>, k: Int) -> [Int] {
        let k = min(k, values.count)
        guard k > 0 else { return [] }
        // a ranks before b: larger, or equal and earlier; NaN after every number.
        func before(_ a: Int, _ b: Int) -> Bool {
            let (x, y) = (values[a], values[b])
            if x.isNaN || y.isNaN { return !x.isNaN && y.isNaN || (x.isNaN && y.isNaN && a < b) }
            return x > y || (x == y && a < b)
        }
        if k > 64 { return Array(values.indices.sorted(by: before).prefix(k)) }
        // A sorted run of the best k so far, worst last: cheap for the small k people ask for.
        var best = [Int]()
        best.reserveCapacity(k + 1)
        for index in values.indices {
            if best.count == k, let worst = best.last, !before(index, worst) { continue }
            var slot = best.count
            while slot > 0, before(index, best[slot - 1]) { slot -= 1 }
            best.insert(index, at: slot)
            if best.count > k { best.removeLast() }
        }
        return best
    }
}
