import LoupeModels
import LoupeWire

/// A `forward` request, checked against the model before any compute: every field that
/// could fail does so here, on the socket thread, with the field named.
struct ForwardSpec: Sendable {
    let sequences: [[Int]]
    /// Per row, the positions asked for, as indices into that row's own tokens.
    let positions: [[Int]]
    /// 0: no top-k.
    let topK: Int
    let wantsLogits: Bool
    let save: [Site]

    init(_ request: Request, model: WarmModel, configuration: DaemonConfiguration) throws(ProtocolError) {
        let dimensions = model.model.dimensions
        sequences = try Self.sequences(request, model: model)
        for (row, tokens) in sequences.enumerated() {
            if let index = tokens.firstIndex(where: { $0 < 0 || $0 >= dimensions.vocabulary }) {
                throw ProtocolError(.indexOutOfRange, "token id \(tokens[index]) is outside the vocabulary of \(dimensions.vocabulary)",
                                    field: "tokens.\(row).\(index)")
            }
        }
        let length = sequences.map(\.count).max() ?? 0
        if length > dimensions.context {
            throw ProtocolError(.tooLarge, "a sequence of \(length) tokens exceeds the model's context of \(dimensions.context)", field: "tokens")
        }
        if sequences.count * length > configuration.maxBatchTokens {
            throw ProtocolError(.tooLarge, "\(sequences.count) rows x \(length) tokens is more than the \(configuration.maxBatchTokens) token slots one forward pass may compute; split the batch",
                                field: request.has("prompts") ? "prompts" : "tokens")
        }

        let asked = request.has("positions") ? try request.integerArray("positions") : [-1]
        guard !asked.isEmpty else { throw ProtocolError(.badRequest, "'positions' is empty", field: "positions") }
        var positions = [[Int]]()
        for tokens in sequences {
            var resolved = [Int]()
            for (index, position) in asked.enumerated() {
                let absolute = position < 0 ? tokens.count + position : position
                guard absolute >= 0, absolute < tokens.count else {
                    throw ProtocolError(.indexOutOfRange, "position \(position) is outside a row of \(tokens.count) tokens", field: "positions.\(index)")
                }
                resolved.append(absolute)
            }
            positions.append(resolved)
        }
        self.positions = positions

        save = try Self.sites(request, model: model)
        wantsLogits = try request.bool("logits", default: false)
        // Without anything else asked for, the five most likely next tokens.
        topK = try request.optionalInt("top_k") ?? (wantsLogits || !save.isEmpty ? 0 : 5)
        guard (0...dimensions.vocabulary).contains(topK) else {
            throw ProtocolError(.badRequest, "'top_k' must be between 0 and the vocabulary size \(dimensions.vocabulary)", field: "top_k")
        }
        let logitBytes = sequences.count * asked.count * dimensions.vocabulary * 4
        if wantsLogits && logitBytes > configuration.limits.maxBytes {
            throw ProtocolError(.tooLarge, "the logits would take \(logitBytes) bytes, over the message limit of \(configuration.limits.maxBytes); ask for top_k or fewer positions", field: "logits")
        }
    }

    /// True when every position asked for is its row's last token: then only the last
    /// column needs the unembedding.
    var onlyLastPositions: Bool {
        zip(sequences, positions).allSatisfy { tokens, positions in positions.allSatisfy { $0 == tokens.count - 1 } }
    }

    private static func sequences(_ request: Request, model: WarmModel) throws(ProtocolError) -> [[Int]] {
        switch (request.has("prompts"), request.has("tokens")) {
        case (true, true), (false, false):
            throw ProtocolError(.badRequest, "forward needs exactly one of 'prompts' (strings) and 'tokens' (token ids)", field: "prompts")
        case (true, false):
            guard let tokenizer = model.loaded.tokenizer else {
                throw ProtocolError(.badRequest, "this model has no tokenizer; send 'tokens' instead of 'prompts'", field: "prompts")
            }
            let prompts = try request.array("prompts")
            guard !prompts.isEmpty else { throw ProtocolError(.badRequest, "'prompts' is empty", field: "prompts") }
            var rows = [[Int]]()
            for (index, prompt) in prompts.enumerated() {
                guard let text = prompt.stringValue else {
                    throw ProtocolError(.badRequest, "'prompts.\(index)' must be a string, got \(prompt.typeName)", field: "prompts.\(index)")
                }
                let ids = tokenizer.encode(text)
                guard !ids.isEmpty else { throw ProtocolError(.badRequest, "prompt \(index) has no tokens", field: "prompts.\(index)") }
                rows.append(ids)
            }
            return rows
        case (false, true):
            let value = request.fields["tokens"]!
            let rows: [[Int]]
            if value.mapValue != nil {
                rows = try tensorRows(value, attachments: request.attachments)
            } else {
                let items = try request.array("tokens")
                var parsed = [[Int]]()
                for (index, item) in items.enumerated() { parsed.append(try request.integers(item, field: "tokens.\(index)")) }
                rows = parsed
            }
            guard !rows.isEmpty else { throw ProtocolError(.badRequest, "'tokens' is empty", field: "tokens") }
            if let empty = rows.firstIndex(where: \.isEmpty) {
                throw ProtocolError(.badRequest, "row \(empty) of 'tokens' is empty", field: "tokens.\(empty)")
            }
            return rows
        }
    }

    /// `tokens` as an i32/i64 tensor of shape [rows, length].
    private static func tensorRows(_ value: MessageValue, attachments: [[UInt8]]) throws(ProtocolError) -> [[Int]] {
        let tensor: WireTensor
        let ids: [Int]
        do {
            tensor = try WireTensor(value, attachments: attachments)
            ids = try tensor.integers()
        } catch {
            throw ProtocolError(error, field: "tokens")
        }
        guard tensor.shape.count == 2 else {
            throw ProtocolError(.shapeMismatch, "a tokens tensor has shape [rows, length], got \(tensor.shape)", field: "tokens")
        }
        let length = tensor.shape[1]
        return (0..<tensor.shape[0]).map { Array(ids[$0 * length..<($0 + 1) * length]) }
    }

    private static func sites(_ request: Request, model: WarmModel) throws(ProtocolError) -> [Site] {
        guard request.has("save") else { return [] }
        var sites = [Site]()
        for (index, item) in try request.array("save").enumerated() {
            guard let name = item.stringValue else {
                throw ProtocolError(.badRequest, "'save.\(index)' must be a site name like 'transformer.h.0.output'", field: "save.\(index)")
            }
            guard model.siteNames.contains(name), let dot = name.lastIndex(of: "."),
                  let io = SiteIO(rawValue: String(name[name.index(after: dot)...])) else {
                let canonical = name.hasSuffix(".output") ? model.model.unprovided(Site(String(name.dropLast(".output".count)), .output)) : nil
                throw ProtocolError(.unknownSite, canonical?.description ?? "the model has no site '\(name)'; models.describe lists its sites", field: "save.\(index)")
            }
            sites.append(Site(String(name[..<dot]), io))
        }
        return sites
    }
}
