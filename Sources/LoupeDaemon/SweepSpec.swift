import LoupeModels
import LoupeSweeps
import LoupeWire

/// A `sweep` request, checked against the model before any compute: every field that can
/// fail does so here, on the socket thread, with the field named.
struct SweepSpec: Sendable {
    /// The request, of the first kind.
    let request: SweepRequest
    let method: SweepMethod
    /// The kinds swept: one, or several at once (attribution).
    let kinds: [SweepKind]
    /// The request gave `kind` as an array: the reply then has one result per kind.
    let listsKinds: Bool
    /// Attribution: also run the exact sweep of each kind and compare.
    let compare: Bool
    /// Each kind's column labels: `"{token}_{index}"` per position of the first pair's clean
    /// prompt (residual, mlp), `"Head i"` (heads), `"Head h @ t"` (head_positions) or
    /// `"Neuron i"` (neurons).
    let columns: [SweepKind: [String]]
    /// The metric as it will be echoed: answers resolved to ids (the first pair's).
    let metric: MessageValue
    /// Each pair's metric, echoed in its entry of `pairs`.
    let pairMetrics: [MessageValue]
    /// The request gave `pairs`: the reply then has one entry per pair.
    let listsPairs: Bool

    /// What this server sweeps, for `hello`.
    static let kinds = SweepKind.allCases.map(\.rawValue)
    static let metrics = ["logit_diff", "logprob", "kl"]
    static let interventions = ["patch", "ablate"]
    static let ablationModes = AblationMethod.allCases.map(\.rawValue)
    static let methods = SweepMethod.allCases.map(\.rawValue)
    static let neuronPositions = NeuronPositions.allCases.map(\.rawValue)
    static var hello: MessageValue {
        ["kinds": MessageValue(kinds), "metrics": MessageValue(metrics), "interventions": MessageValue(interventions),
         "ablation_modes": MessageValue(ablationModes), "methods": MessageValue(methods), "neuron_positions": MessageValue(neuronPositions)]
    }

    init(_ request: Request, model: WarmModel, configuration: DaemonConfiguration) throws(ProtocolError) {
        let dimensions = model.model.dimensions
        let methodName = request.has("method") ? try request.string("method") : SweepMethod.activation.rawValue
        guard let method = SweepMethod(rawValue: methodName) else {
            throw ProtocolError(.badRequest, "method must be one of \(Self.methods.joined(separator: ", ")), not '\(methodName)'", field: "method")
        }
        let kinds = try Self.kinds(request, method: method)
        let compare = try request.bool("compare", default: false)
        if compare && method != .attribution {
            throw ProtocolError(.badRequest, "compare sets attribution estimates beside the exact sweep; it is for method attribution", field: "compare")
        }
        var neuronPositions = NeuronPositions.last
        if request.has("neuron_positions") {
            let name = try request.string("neuron_positions")
            guard let positions = NeuronPositions(rawValue: name) else {
                throw ProtocolError(.badRequest, "neuron_positions must be one of \(Self.neuronPositions.joined(separator: ", ")), not '\(name)'", field: "neuron_positions")
            }
            guard kinds.contains(.neurons) else {
                throw ProtocolError(.badRequest, "neuron_positions is for kind neurons", field: "neuron_positions")
            }
            neuronPositions = positions
        }
        let (intervention, referenceValues) = try Self.intervention(request)
        let needsCorrupted = intervention == .patch || intervention == .ablate(.resample)

        // One pair (`clean`, `corrupted`) or several (`pairs`), each with the top-level metric
        // unless it gives its own.
        let topMetric = request.has("metric") ? try Self.metric(request.fields["metric"]!, field: "metric", model: model) : nil
        var pairs = [SweepPair](), echoed = [MessageValue]()
        if request.has("pairs") {
            if request.has("clean") || request.has("corrupted") {
                throw ProtocolError(.badRequest, "give one pair as 'clean' and 'corrupted' or several as 'pairs', not both", field: "pairs")
            }
            let items = try request.array("pairs")
            guard !items.isEmpty else { throw ProtocolError(.badRequest, "'pairs' is empty: give at least one {clean, corrupted}", field: "pairs") }
            for (index, item) in items.enumerated() {
                let field = "pairs.\(index)"
                guard let entry = item.mapValue else {
                    throw ProtocolError(.badRequest, "'\(field)' must be a map {clean, corrupted, metric}, got \(item.typeName)", field: field)
                }
                var metric = topMetric
                if let own = entry["metric"], own != .null { metric = try Self.metric(own, field: "\(field).metric", model: model) }
                guard let metric else {
                    throw ProtocolError(.badRequest, "sweep needs 'metric' (or one in every pair): {logit_diff: {answer, wrong}}, {logprob: {answer}} or {kl: {}}", field: "\(field).metric")
                }
                pairs.append(SweepPair(clean: try Self.tokens(entry["clean"], field: "\(field).clean", model: model),
                                       corrupted: try Self.optionalTokens(entry["corrupted"], field: "\(field).corrupted", required: needsCorrupted, model: model),
                                       metric: metric.0))
                echoed.append(metric.1)
            }
        } else {
            guard let metric = topMetric else {
                throw ProtocolError(.badRequest, "sweep needs 'metric': {logit_diff: {answer, wrong}}, {logprob: {answer}} or {kl: {}}", field: "metric")
            }
            pairs = [SweepPair(clean: try Self.tokens(request.fields["clean"], field: "clean", model: model),
                               corrupted: try Self.optionalTokens(request.fields["corrupted"], field: "corrupted", required: needsCorrupted, model: model),
                               metric: metric.0)]
            echoed = [metric.1]
        }
        var reference = [[Int]]()
        for (index, value) in referenceValues.enumerated() {
            reference.append(try Self.tokens(value, field: "params.reference.\(index)", model: model))
        }
        let prompts = pairs.flatMap { [$0.clean] + ($0.corrupted.map { [$0] } ?? []) } + reference
        if let longest = prompts.map(\.count).max(), longest > dimensions.context {
            throw ProtocolError(.tooLarge, "a prompt of \(longest) tokens exceeds the model's context of \(dimensions.context)", field: request.has("pairs") ? "pairs" : "clean")
        }

        var layers: [Int]?
        if request.has("layers") {
            var chosen = [Int]()
            for (index, item) in try request.array("layers").enumerated() {
                guard let layer = item.intValue else {
                    throw ProtocolError(.badRequest, "'layers.\(index)' must be a layer index, got \(item.typeName)", field: "layers.\(index)")
                }
                guard layer >= 0 && layer < dimensions.layers else {
                    throw ProtocolError(.indexOutOfRange, "layer \(layer) is out of range: the model has \(dimensions.layers) layers", field: "layers.\(index)")
                }
                chosen.append(layer)
            }
            layers = chosen
        }
        let normalized = try request.bool("normalized", default: true)
        let sweep = SweepRequest(pairs: pairs, kind: kinds[0], intervention: intervention, reference: reference, layers: layers,
                                 normalized: normalized, neuronPositions: neuronPositions)
        let promptsField = request.has("pairs") ? "pairs" : "clean"
        for kind in kinds {
            do { try sweep.with(kind: kind).validate(dimensions, method: method) } catch { throw error.protocolError(pairsField: request.has("pairs")) }
        }
        switch method {
        case .activation:
            // The edited runs' rows, stacked: each run computes from its first edited position to the end.
            let rows = sweep.stackedRowsBound(dimensions)
            if rows > configuration.maxBatchTokens {
                throw ProtocolError(.tooLarge, "this sweep would stack \(rows) token rows, more than the \(configuration.maxBatchTokens) one pass may compute; use shorter prompts, fewer pairs, or prompts that differ later\(kinds[0] == .neurons ? " (or method attribution)" : "")", field: promptsField)
            }
        case .attribution:
            // Two passes, each of every pair's prompt.
            let slots = TokenBatch(pairs.map(\.clean)).slots
            if slots > configuration.maxBatchTokens {
                throw ProtocolError(.tooLarge, "each of the attribution sweep's passes would run \(slots) token slots, more than the \(configuration.maxBatchTokens) one pass may compute; use shorter prompts or fewer pairs", field: promptsField)
            }
            let bytes = AttributionSweep.backwardBytes(sweep, dimensions)
            if bytes > configuration.maxBackwardBytes {
                throw ProtocolError(.tooLarge, "the attribution sweep's backward could hold up to \(bytes) bytes, more than the \(configuration.maxBackwardBytes) one backward may (loupe serve --max-backward-mb); use shorter prompts or fewer pairs", field: promptsField)
            }
            if compare, let kind = kinds.first(where: { sweep.with(kind: $0).stackedRowsBound(dimensions) > configuration.maxBatchTokens }) {
                throw ProtocolError(.tooLarge, "compare runs the exact \(kind.rawValue) sweep, which would stack \(sweep.with(kind: kind).stackedRowsBound(dimensions)) token rows, more than the \(configuration.maxBatchTokens) one pass may compute; leave compare out for this kind", field: "compare")
            }
        }
        self.request = sweep
        self.method = method
        self.kinds = kinds
        listsKinds = request.fields["kind"]?.arrayValue != nil
        self.compare = compare
        metric = echoed[0]
        pairMetrics = echoed
        listsPairs = request.has("pairs")
        let clean = pairs[0].clean
        var columns = [SweepKind: [String]]()
        for kind in kinds {
            switch kind {
            case .residual, .mlp:
                columns[kind] = clean.enumerated().map { index, id in
                    "\(model.loaded.tokenizer.map { $0.decode([id]) } ?? String(id))_\(index)"
                }
            case .heads:
                columns[kind] = (0..<dimensions.heads).map { "Head \($0)" }
            case .headPositions:
                columns[kind] = (0..<dimensions.heads).flatMap { head in (0..<clean.count).map { "Head \(head) @ \($0)" } }
            case .neurons:
                columns[kind] = (0..<dimensions.intermediate).map { "Neuron \($0)" }
            }
        }
        self.columns = columns
    }

    /// `kind`: a kind's name, or (attribution) an array of distinct names.
    private static func kinds(_ request: Request, method: SweepMethod) throws(ProtocolError) -> [SweepKind] {
        func kind(_ name: String, field: String) throws(ProtocolError) -> SweepKind {
            guard let kind = SweepKind(rawValue: name) else {
                throw ProtocolError(.badRequest, "kind must be one of \(Self.kinds.joined(separator: ", ")), not '\(name)'", field: field)
            }
            return kind
        }
        guard let items = request.fields["kind"]?.arrayValue else {
            return [try kind(request.has("kind") ? try request.string("kind") : SweepKind.residual.rawValue, field: "kind")]
        }
        guard method == .attribution else {
            throw ProtocolError(.badRequest, "several kinds at once are for method attribution, whose two passes serve them all; the exact sweep takes one kind", field: "kind")
        }
        guard !items.isEmpty else { throw ProtocolError(.badRequest, "'kind' is empty: give a kind or several", field: "kind") }
        var kinds = [SweepKind]()
        for (index, item) in items.enumerated() {
            guard let name = item.stringValue else {
                throw ProtocolError(.badRequest, "'kind.\(index)' must be a kind's name, got \(item.typeName)", field: "kind.\(index)")
            }
            let parsed = try kind(name, field: "kind.\(index)")
            if kinds.contains(parsed) { throw ProtocolError(.badRequest, "kind names \(name) twice", field: "kind.\(index)") }
            kinds.append(parsed)
        }
        return kinds
    }

    /// `intervention` (`patch`, the default, or `ablate`) and its `params`: for `ablate`,
    /// `mode` (zero, mean or resample; the `ablate` intervention's own parameter) and, for
    /// mean, `reference` (prompts). Returns the reference prompts still to be tokenized.
    private static func intervention(_ request: Request) throws(ProtocolError) -> (SweepIntervention, [MessageValue]) {
        let name = request.has("intervention") ? try request.string("intervention") : "patch"
        var params = [String: MessageValue]()
        if let value = request.fields["params"], value != .null {
            guard let map = value.mapValue else { throw ProtocolError(.badRequest, "'params' must be a map, got \(value.typeName)", field: "params") }
            params = map
        }
        switch name {
        case "patch":
            if let key = params.keys.sorted().first {
                throw ProtocolError(.badRequest, "patching takes no params; '\(key)' is for intervention ablate", field: "params.\(key)")
            }
            return (.patch, [])
        case "ablate":
            if let key = params.keys.sorted().first(where: { !["mode", "reference"].contains($0) }) {
                throw ProtocolError(.badRequest, "ablate sweeps take params mode and reference, not '\(key)'", field: "params.\(key)")
            }
            let modeName: String
            switch params["mode"] {
            case nil, .null?: modeName = AblationMethod.zero.rawValue
            case .string(let text)?: modeName = text
            case let other?: throw ProtocolError(.badRequest, "'params.mode' must be a string, got \(other.typeName)", field: "params.mode")
            }
            guard let method = AblationMethod(rawValue: modeName) else {
                throw ProtocolError(.badRequest, "params.mode must be one of \(ablationModes.joined(separator: ", ")), not '\(modeName)'", field: "params.mode")
            }
            let reference: [MessageValue]
            switch params["reference"] {
            case nil, .null?: reference = []
            case let value? where value.arrayValue != nil: reference = value.arrayValue!
            case let other?: throw ProtocolError(.badRequest, "'params.reference' must be an array of prompts, got \(other.typeName)", field: "params.reference")
            }
            if method == .mean && reference.isEmpty {
                throw ProtocolError(.badRequest, "mean ablation needs 'params.reference': the prompts to average over", field: "params.reference")
            }
            if method != .mean && !reference.isEmpty {
                throw ProtocolError(.badRequest, "'params.reference' is for mode mean; mode \(modeName) reads no reference prompts", field: "params.reference")
            }
            return (.ablate(method), reference)
        default:
            throw ProtocolError(.badRequest, "intervention must be one of \(interventions.joined(separator: ", ")), not '\(name)'", field: "intervention")
        }
    }

    /// A corrupted prompt, or nil when it is absent and not `required`.
    private static func optionalTokens(_ value: MessageValue?, field: String, required: Bool, model: WarmModel) throws(ProtocolError) -> [Int]? {
        if !required, value == nil || value == .null { return nil }
        return try tokens(value, field: field, model: model)
    }

    /// A prompt (string), token ids (array), or `{prompt}` / `{tokens}`.
    private static func tokens(_ value: MessageValue?, field: String, model: WarmModel) throws(ProtocolError) -> [Int] {
        guard let value, value != .null else {
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
            ids = []
            for (index, item) in list.enumerated() {
                guard let id = item.intValue else {
                    throw ProtocolError(.badRequest, "'\(at).\(index)' must be a token id (an integer), got \(item.typeName)", field: "\(at).\(index)")
                }
                ids.append(id)
            }
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
    /// (`"kl"`) for a metric without parameters.
    private static func metric(_ value: MessageValue, field: String, model: WarmModel) throws(ProtocolError) -> (SweepMetric, MessageValue) {
        let name: String
        let parameters: [String: MessageValue]
        if let text = value.stringValue {
            (name, parameters) = (text, [:])
        } else if let map = value.mapValue, map.count == 1, let entry = map.first {
            guard entry.value == .null || entry.value.mapValue != nil else {
                throw ProtocolError(.badRequest, "'\(field).\(entry.key)' must be a map of its parameters", field: "\(field).\(entry.key)")
            }
            (name, parameters) = (entry.key, entry.value.mapValue ?? [:])
        } else {
            throw ProtocolError(.badRequest, "'\(field)' must be a map with one key: logit_diff, logprob or kl", field: field)
        }
        func answer(_ key: String) throws(ProtocolError) -> Int {
            try Self.answer(parameters[key], field: "\(field).\(name).\(key)", model: model)
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
            throw ProtocolError(.badRequest, "unknown metric '\(name)'; this server computes \(metrics.joined(separator: ", "))", field: field)
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
            // Without BOS: a tokenizer that adds one (Gemma's) gives [BOS, id] for " John".
            let ids = tokenizer.encodeWithoutSpecialTokens(text)
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

extension SweepError {
    /// The typed error, naming the request field at fault (`pairs.N.corrupted` when the
    /// request gave `pairs`, else `corrupted`).
    func protocolError(pairsField: Bool = false) -> ProtocolError {
        func pairField(_ pair: Int, _ key: String) -> String { pairsField ? "pairs.\(pair).\(key)" : key }
        switch self {
        case .noPairs: return ProtocolError(.badRequest, description, field: "pairs")
        case .noLayers, .repeatedLayer: return ProtocolError(.badRequest, description, field: "layers")
        case .layerOutOfRange: return ProtocolError(.indexOutOfRange, description, field: "layers")
        case .emptyPrompt(let pair): return ProtocolError(.badRequest, description, field: pairField(pair, "clean"))
        case .lengthsDiffer(let pair, _, _), .identicalPrompts(let pair), .missingCorrupted(let pair):
            return ProtocolError(.badRequest, description, field: pairField(pair, "corrupted"))
        case .tokenOutOfRange(_, let pair): return ProtocolError(.indexOutOfRange, description, field: pairField(pair, "metric"))
        case .pairLengthsDiffer(let pair, _, _): return ProtocolError(.shapeMismatch, description, field: pairField(pair, "clean"))
        case .missingReference: return ProtocolError(.badRequest, description, field: "params.reference")
        case .referenceLength(let index, _, _): return ProtocolError(.shapeMismatch, description, field: "params.reference.\(index)")
        case .intervention: return ProtocolError(.internalError, description)
        case .ablationByAttribution: return ProtocolError(.badRequest, description, field: "method")
        case .neuronAblation: return ProtocolError(.badRequest, description, field: "intervention")
        }
    }
}
