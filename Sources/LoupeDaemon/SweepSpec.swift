import LoupeModels
import LoupeSweeps
import LoupeWire

/// A `sweep` request, checked against the model before any compute: every field that can
/// fail does so here, on the socket thread, with the field named.
struct SweepSpec: Sendable {
    let request: SweepRequest
    /// Column labels: `"{token}_{index}"` per position (residual) or `"Head i"` (heads).
    let columns: [String]
    /// The metric as it will be echoed: answers resolved to ids.
    let metric: MessageValue

    /// The kinds and metrics this server sweeps, for `hello`.
    static let kinds = SweepKind.allCases.map(\.rawValue)
    static let metrics = ["logit_diff", "logprob", "kl"]

    init(_ request: Request, model: WarmModel, configuration: DaemonConfiguration) throws(ProtocolError) {
        let dimensions = model.model.dimensions
        let clean = try Self.tokens(request, "clean", model: model)
        let corrupted = try Self.tokens(request, "corrupted", model: model)
        guard clean.count == corrupted.count else {
            throw ProtocolError(.badRequest, SweepError.lengthsDiffer(clean: clean.count, corrupted: corrupted.count).description, field: "corrupted")
        }
        guard let firstDifference = clean.indices.first(where: { clean[$0] != corrupted[$0] }) else {
            throw ProtocolError(.badRequest, SweepError.identicalPrompts.description, field: "corrupted")
        }
        if clean.count > dimensions.context {
            throw ProtocolError(.tooLarge, "a prompt of \(clean.count) tokens exceeds the model's context of \(dimensions.context)", field: "clean")
        }

        let kindName = request.has("kind") ? try request.string("kind") : SweepKind.residual.rawValue
        guard let kind = SweepKind(rawValue: kindName) else {
            throw ProtocolError(.badRequest, "kind must be \(Self.kinds.joined(separator: " or ")), not '\(kindName)'", field: "kind")
        }
        // The patched runs' rows, stacked: each run computes from its first position to the end.
        let changed = clean.count - firstDifference
        let suffixes = changed * (changed + 1) / 2  // a run from each differing position to the end
        let rows = dimensions.layers * [SweepKind.residual: suffixes, .heads: dimensions.heads * changed,
                                        .headPositions: dimensions.heads * suffixes][kind]!
        if rows > configuration.maxBatchTokens {
            throw ProtocolError(.tooLarge, "this sweep would stack \(rows) token rows, more than the \(configuration.maxBatchTokens) one pass may compute; use shorter prompts or prompts that differ later", field: "clean")
        }

        let (metric, echoed) = try Self.metric(request, model: model)
        let normalized = try request.bool("normalized", default: true)
        self.request = SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: metric, normalized: normalized)
        self.metric = echoed
        switch kind {
        case .residual:
            columns = clean.enumerated().map { index, id in
                "\(model.loaded.tokenizer.map { $0.decode([id]) } ?? String(id))_\(index)"
            }
        case .heads:
            columns = (0..<dimensions.heads).map { "Head \($0)" }
        case .headPositions:
            columns = (0..<dimensions.heads).flatMap { head in (0..<clean.count).map { "Head \(head) @ \($0)" } }
        }
    }

    /// `clean` or `corrupted`: a prompt (string), token ids (array), or `{prompt}` / `{tokens}`.
    private static func tokens(_ request: Request, _ field: String, model: WarmModel) throws(ProtocolError) -> [Int] {
        guard let value = request.fields[field], value != .null else {
            throw ProtocolError(.badRequest, "sweep needs '\(field)': a prompt or an array of token ids", field: field)
        }
        var ids: [Int]
        var at = field
        if let text = value.stringValue ?? value["prompt"]?.stringValue {
            guard let tokenizer = model.loaded.tokenizer else {
                throw ProtocolError(.badRequest, "this model has no tokenizer; send '\(field)' as token ids", field: field)
            }
            ids = tokenizer.encode(text)
        } else if let list = value.arrayValue ?? value["tokens"]?.arrayValue {
            if value.arrayValue == nil { at += ".tokens" }
            ids = try request.integers(.array(list), field: at)
        } else {
            throw ProtocolError(.badRequest, "'\(field)' must be a prompt or an array of token ids, got \(value.typeName)", field: field)
        }
        guard !ids.isEmpty else { throw ProtocolError(.badRequest, "'\(field)' has no tokens", field: field) }
        let vocabulary = model.model.dimensions.vocabulary
        if let index = ids.firstIndex(where: { $0 < 0 || $0 >= vocabulary }) {
            throw ProtocolError(.indexOutOfRange, "token id \(ids[index]) is outside the vocabulary of \(vocabulary)", field: "\(at).\(index)")
        }
        return ids
    }

    /// `{logit_diff: {answer, wrong}}`, `{logprob: {answer}}` or `{kl: {}}`; the name alone
    /// (`"kl"`) for a metric without parameters. Default: none (the request must say).
    private static func metric(_ request: Request, model: WarmModel) throws(ProtocolError) -> (SweepMetric, MessageValue) {
        guard let value = request.fields["metric"], value != .null else {
            throw ProtocolError(.badRequest, "sweep needs 'metric': {logit_diff: {answer, wrong}}, {logprob: {answer}} or {kl: {}}", field: "metric")
        }
        let name: String
        let parameters: [String: MessageValue]
        if let text = value.stringValue {
            (name, parameters) = (text, [:])
        } else if let map = value.mapValue, map.count == 1, let entry = map.first {
            guard entry.value == .null || entry.value.mapValue != nil else {
                throw ProtocolError(.badRequest, "'metric.\(entry.key)' must be a map of its parameters", field: "metric.\(entry.key)")
            }
            (name, parameters) = (entry.key, entry.value.mapValue ?? [:])
        } else {
            throw ProtocolError(.badRequest, "'metric' must be a map with one key: logit_diff, logprob or kl", field: "metric")
        }
        func answer(_ key: String) throws(ProtocolError) -> Int {
            try Self.answer(parameters[key], field: "metric.\(name).\(key)", model: model)
        }
        switch name {
        case "logit_diff":
            let (right, wrong) = (try answer("answer"), try answer("wrong"))
            return (.logitDifference(answer: right, wrong: wrong),
                    ["logit_diff": ["answer": MessageValue(right), "wrong": MessageValue(wrong)]])
        case "logprob":
            let right = try answer("answer")
            return (.logProbability(answer: right), ["logprob": ["answer": MessageValue(right)]])
        case "kl":
            return (.klFromClean, ["kl": .map([:])])
        default:
            throw ProtocolError(.badRequest, "unknown metric '\(name)'; this server computes \(metrics.joined(separator: ", "))", field: "metric")
        }
    }

    /// An answer: a token id, or a string the model's tokenizer makes exactly one token of.
    private static func answer(_ value: MessageValue?, field: String, model: WarmModel) throws(ProtocolError) -> Int {
        let vocabulary = model.model.dimensions.vocabulary
        switch value {
        case let value? where value.intValue != nil:
            let id = value.intValue!
            guard id >= 0 && id < vocabulary else {
                throw ProtocolError(.indexOutOfRange, "answer token id \(id) is outside the vocabulary of \(vocabulary)", field: field)
            }
            return id
        case .string(let text)?:
            guard let tokenizer = model.loaded.tokenizer else {
                throw ProtocolError(.badRequest, "this model has no tokenizer; give the answer as a token id", field: field)
            }
            let ids = tokenizer.encode(text)
            guard ids.count == 1 else {
                let pieces = ids.map { tokenizer.decode([$0]).debugDescription }.joined(separator: ", ")
                throw ProtocolError(.badRequest, "the answer \(text.debugDescription) is \(ids.count) tokens (\(pieces)), not one; a sweep's answer must be a single token (mind the leading space)", field: field)
            }
            return ids[0]
        case nil, .null?:
            throw ProtocolError(.badRequest, "'\(field)' is missing: a token (string) or a token id", field: field)
        case let other?:
            throw ProtocolError(.badRequest, "'\(field)' must be a token (string) or a token id, got \(other.typeName)", field: field)
        }
    }
}
