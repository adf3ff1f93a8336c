import LoupeFormats
import LoupeTensor

/// What one forward pass carries through an architecture's layers: which positions it
/// computes, the hooks and the cancellation check. Architectures show their values to the
/// hooks with `call` and `hook` (Modules.swift), in order.
///
/// A full pass computes every position of each of `rows` sequences. A continuation computes
/// only the last positions of each sequence, attending to the keys and values of the earlier
/// ones from a cache: attention is causal, so nothing at a later position can change an
/// earlier one. Rows of a continuation may start at different positions; their computed
/// positions are then stacked, row after row, without padding.
public struct ForwardPass {
    public let rows: Int
    /// Positions computed in each row.
    public let queryCounts: [Int]
    /// Positions per row, cached ones included.
    public let keyCount: Int
    /// Pad slots at the start of each row (counted in the whole sequence).
    public let padding: [Int]
    /// The position id of each computed slot, row by row.
    public let positionIDs: [Int]
    /// The token id of each computed slot; nil for a continuation that starts from hidden states.
    public let tokenIDs: [Int]?
    private var hooks: (any ForwardHooks)?
    private let cancelled: CancellationCheck?
    /// The cache a continuation reads its earlier positions from, and which of its rows each row continues.
    private let prefix: (cache: KeyValueCache, rows: [Int])?
    private let recorder: KeyValueCache?
    /// The cache a generation's pass appends its keys and values to, and attends through.
    public let decodeCache: DecodeCache?

    /// A full pass over a batch of token sequences. `recorder` keeps every layer's keys and
    /// values, for continuations.
    public init(batch: TokenBatch, hooks: (any ForwardHooks)?, cancelled: CancellationCheck?,
                recorder: KeyValueCache? = nil) {
        rows = batch.rows
        queryCounts = Array(repeating: batch.length, count: batch.rows)
        keyCount = batch.length
        padding = batch.padding
        positionIDs = batch.positionIDs()
        tokenIDs = batch.paddedIDs()
        self.hooks = hooks
        self.cancelled = cancelled
        prefix = nil
        self.recorder = recorder
        decodeCache = nil
    }

    /// A pass of a generation: `count` more slots per row, token ids `ids` (row after row),
    /// after the slots `cache` holds. Row r starts with `padding[r]` pad slots; positions
    /// count from its first real token, so a row continues its own count. The step that
    /// runs the prompts appends every slot of the padded batch to an empty cache; each later
    /// step one token per row.
    public init(appending ids: [Int], count: Int, to cache: DecodeCache, padding: [Int],
                hooks: (any ForwardHooks)?, cancelled: CancellationCheck?) {
        precondition(padding.count == cache.rows && ids.count == cache.rows * count && cache.filled + count <= cache.capacity)
        rows = cache.rows
        queryCounts = Array(repeating: count, count: rows)
        keyCount = cache.filled + count
        self.padding = padding
        positionIDs = padding.flatMap { pad in (cache.filled..<(cache.filled + count)).map { max($0 - pad, 0) } }
        tokenIDs = ids
        self.hooks = hooks
        self.cancelled = cancelled
        prefix = nil
        recorder = nil
        decodeCache = cache
    }

    /// A continuation of the unpadded sequence in row `row` of `cache`: one row per entry of
    /// `starts`, computing positions `start..<cache.positions` from hidden states.
    public init(continuing cache: KeyValueCache, row: Int = 0, starts: [Int],
                hooks: (any ForwardHooks)? = nil, cancelled: CancellationCheck? = nil) {
        self.init(continuing: cache, rows: Array(repeating: row, count: starts.count), starts: starts,
                  hooks: hooks, cancelled: cancelled)
    }

    /// A continuation of several rows of `cache`, which may be left-padded as a `TokenBatch`
    /// pads them: continuation row i continues cached row `rows[i]`, whose first `padding[i]`
    /// slots are pad, computing its slots `starts[i]..<cache.positions` from hidden states.
    public init(continuing cache: KeyValueCache, rows cacheRows: [Int], padding: [Int]? = nil, starts: [Int],
                hooks: (any ForwardHooks)? = nil, cancelled: CancellationCheck? = nil) {
        let total = cache.positions
        let padding = padding ?? Array(repeating: 0, count: starts.count)
        precondition(cacheRows.count == starts.count && padding.count == starts.count, "one cached row and padding per continuation row")
        precondition(zip(starts, padding).allSatisfy { $0 >= $1 && $0 < total }, "continuations start inside the cached sequence")
        rows = starts.count
        queryCounts = starts.map { total - $0 }
        keyCount = total
        self.padding = padding
        positionIDs = zip(starts, padding).flatMap { start, pad in (start..<total).map { $0 - pad } }
        tokenIDs = nil
        self.hooks = hooks
        self.cancelled = cancelled
        prefix = (cache, cacheRows)
        recorder = nil
        decodeCache = nil
        precondition(hooks == nil || Set(starts).count <= 1, "hooks see [rows, length, ...]: rows of one continuation must start together")
    }

    /// Positions computed per row (the most, for a continuation whose rows start apart).
    public var length: Int { queryCounts.max() ?? 0 }
    /// Positions computed over all rows: the rows of every activation matrix.
    public var computedRows: Int { queryCounts.reduce(0, +) }

    /// The attention geometry of this pass's rows.
    public func attentionGeometry(heads: Int, keyValueHeads: Int, headDim: Int) -> AttentionGeometry {
        AttentionGeometry(queryCounts: queryCounts, keys: keyCount, keyStride: decodeCache?.capacity, heads: heads,
                          keyValueHeads: keyValueHeads, headDim: headDim, padding: padding)
    }

    /// The keys and values layer `layer` attends to, [rows · keyCount, width]: for each row,
    /// the cached ones of its earlier positions, then those of the positions it computes. A
    /// recording pass keeps them. A generation's pass reads them where its cache keeps them,
    /// [rows · capacity, width].
    public func attentionInputs(layer: Int, keys: Tensor, values: Tensor) -> (keys: Tensor, values: Tensor) {
        if let decodeCache { return decodeCache.append(layer: layer, keys: keys, values: values, count: length) }
        var result = (keys: keys, values: values)
        if let prefix {
            result = (assemble(prefix.cache.keys[layer]!, keys, cacheRows: prefix.rows, cachedPerRow: prefix.cache.positions),
                      assemble(prefix.cache.values[layer]!, values, cacheRows: prefix.rows, cachedPerRow: prefix.cache.positions))
        }
        recorder?.store(layer: layer, keys: result.keys, values: result.values, rows: rows)
        return result
    }

    /// For each row: the first positions of its cached row `cacheRows[row]` (each holds
    /// `cachedPerRow` positions), then the row's computed positions.
    private func assemble(_ cached: Tensor, _ computed: Tensor, cacheRows: [Int], cachedPerRow: Int) -> Tensor {
        let width = computed.columnCount
        let out = Tensor(zeros: [rows * keyCount, width])
        var computedRow = 0
        for row in 0..<rows {
            let earlier = keyCount - queryCounts[row], cacheRow = cacheRows[row]
            out.slice(axis: 0, (row * keyCount)..<(row * keyCount + earlier))
                .assign(from: cached.slice(axis: 0, (cacheRow * cachedPerRow)..<(cacheRow * cachedPerRow + earlier)))
            out.slice(axis: 0, (row * keyCount + earlier)..<((row + 1) * keyCount))
                .assign(from: computed.slice(axis: 0, computedRow..<(computedRow + queryCounts[row])))
            computedRow += queryCounts[row]
        }
        return out
    }

    /// The same pass with its hooks wrapped by `transform`: for a model that runs another
    /// model's layers and shows the hooks less, or more, than that model does.
    public func wrappingHooks(_ transform: (any ForwardHooks) -> any ForwardHooks) -> ForwardPass {
        guard let hooks else { return self }
        var wrapped = self
        wrapped.hooks = transform(hooks)
        return wrapped
    }

    /// True when hooks may look at sites; an architecture may then take a slower path that
    /// materialises every site.
    public var hasHooks: Bool { hooks != nil }

    /// Shows `value` to the hooks at `site`. The engine keeps activations as
    /// [rows·length, features]; hooks see them as `shape` (by default [rows, length,
    /// features]) and may write into them or replace them with a tensor of the same shape.
    /// Architectures reach it through `call` and `hook` (Modules.swift).
    func fire(_ site: Site, _ value: inout Tensor, shape: [Int]? = nil, tuple: Bool = false) throws {
        guard let hooks, hooks.wants(site) else { return }
        let storedShape = value.shape
        let seenShape = shape ?? [rows, length, value.columnCount]
        var seen = value.reshaped(seenShape)
        (hooks as? SiteDiscovery)?.noteTuple(site, tuple)
        try hooks.visit(site, &seen)
        guard seen.shape == seenShape else {
            throw ModelError.hookShapeMismatch(site: site.description, expected: seenShape, got: seen.shape)
        }
        value = seen.reshaped(storedShape)
    }

    /// Throws `ModelError.cancelled` if the job was cancelled; architectures call it once per layer.
    public func checkCancelled() throws {
        if let cancelled, cancelled() { throw ModelError.cancelled }
    }

    /// The rows of final hidden states [computed rows, hidden] that the unembedding reads.
    public func rowsToUnembed(_ hidden: Tensor, _ which: LogitRows) -> Tensor {
        switch which {
        case .all, .none: return hidden
        case .last:
            let last = Tensor(zeros: [rows, hidden.columnCount])
            var end = 0
            for row in 0..<rows {
                end += queryCounts[row]
                last.select(axis: 0, row).assign(from: hidden.select(axis: 0, end - 1))
            }
            return last
        }
    }
}

/// Finds every site a model fires, its order and its symbolic shape, by running two tiny
/// batches (1x1 and 2x3 tokens) and seeing which dims follow the batch and the sequence.
/// The site list therefore always matches what the forward pass really does.
final class SiteDiscovery: ForwardHooks {
    private(set) var order: [Site] = []
    private(set) var shapes: [Site: [Int]] = [:]
    private(set) var tuples: Set<Site> = []

    func wants(_ site: Site) -> Bool { true }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        if shapes[site] == nil { order.append(site) }
        shapes[site] = value.shape
    }

    func noteTuple(_ site: Site, _ tuple: Bool) {
        if tuple { tuples.insert(site) }
    }

    static func sites(of model: any LanguageModel) throws -> [SiteInfo] {
        let small = SiteDiscovery(), large = SiteDiscovery()
        _ = try model.forward(TokenBatch([[0]]), hooks: small, logits: .all, cancelled: nil)
        _ = try model.forward(TokenBatch([[0, 0, 0], [0, 0, 0]]), hooks: large, logits: .all, cancelled: nil)
        return small.order.map { site in
            let one = small.shapes[site]!, other = large.shapes[site] ?? one
            let symbolic = zip(one, other).map { a, b in
                a == b ? a : (b == 2 ? SiteInfo.batchDim : SiteInfo.sequenceDim)
            }
            return SiteInfo(site.path, site.io, shape: symbolic, tuple: small.tuples.contains(site))
        }
    }
}

/// Looks up an architecture's weights by HF name, accepting checkpoints saved without the
/// base model's prefix (OpenAI's GPT-2 files have no `transformer.`).
public struct WeightReader {
    public let source: any WeightSource
    public let optionalPrefix: String

    public init(_ source: any WeightSource, optionalPrefix: String) {
        self.source = source
        self.optionalPrefix = optionalPrefix
    }

    public func has(_ name: String) -> Bool { resolve(name) != nil }

    /// The tensor `name`, checked to be `shape` and finite: a NaN or infinity in a weight (or in
    /// a quantized block's scale, which spreads to its block) would make every result NaN,
    /// silently, so the load is refused instead, naming the tensor and the element.
    public func callAsFunction(_ name: String, _ shape: [Int]) throws -> Tensor {
        let stored = resolve(name) ?? name
        let tensor = try source.tensor(stored, shape: shape)
        if let bad = firstNonFinite(tensor) {
            throw ModelError.format(FormatError(.badValue, file: source.description, item: stored,
                                                "element \(bad) of shape \(shape) is \(tensor.data[bad]): a weight must be finite"))
        }
        return tensor
    }

    private func resolve(_ name: String) -> String? {
        if source.shape(of: name) != nil { return name }
        if name.hasPrefix(optionalPrefix) {
            let bare = String(name.dropFirst(optionalPrefix.count))
            if source.shape(of: bare) != nil { return bare }
        }
        return nil
    }
}
