import LoupeTensor

/// The sizes every architecture shares, as the rest of Loupe needs them.
public struct ModelDimensions: Sendable, Equatable, Codable {
    public var layers: Int
    public var hidden: Int
    public var heads: Int
    /// Key/value heads: fewer than `heads` with grouped-query attention.
    public var keyValueHeads: Int
    public var headDim: Int
    /// The MLP's inner width.
    public var intermediate: Int
    public var vocabulary: Int
    /// The longest sequence the model accepts.
    public var context: Int

    public init(layers: Int, hidden: Int, heads: Int, keyValueHeads: Int, headDim: Int, intermediate: Int,
                vocabulary: Int, context: Int) {
        self.layers = layers
        self.hidden = hidden
        self.heads = heads
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
        self.intermediate = intermediate
        self.vocabulary = vocabulary
        self.context = context
    }
}

/// A transformer ready to run: what an architecture adapter builds from a checkpoint.
///
/// An architecture says how to embed tokens, run one layer and apply the final norm; the
/// forward pass that strings them together, and the unembedding, are the same for all.
public protocol LanguageModel: AnyObject, Sendable {
    /// The adapter's name ("gpt2", "llama").
    var architecture: String { get }
    var dimensions: ModelDimensions { get }
    /// The HF module tree, each module with its sites.
    var moduleTree: ModuleNode { get }
    /// What the trace op `call` runs of each module, and every parameter (`ModuleScope.modules`).
    var modules: ModuleTable { get }
    /// Bytes of float32 weights held.
    var weightBytes: Int { get }
    /// The canonical sites its forward pass shows the hooks (the conformance tests check it
    /// shows exactly these, with their documented shapes).
    var canonicalSites: Set<CanonicalSite.Kind> { get }
    /// The unembedding (`lm_head`).
    var head: LinearModule { get }
    /// Final logit soft-capping (Gemma 2): logits become cap · tanh(logits / cap) after
    /// lm_head. Nil (the default) for none.
    var logitSoftcap: Float? { get }

    /// The hidden states entering layer 0 for the pass's tokens: [rows · length, hidden].
    func embed(_ pass: ForwardPass) throws -> Tensor
    /// Layer `index` on hidden states [rows · length, hidden].
    func layer(_ index: Int, _ x: Tensor, _ pass: ForwardPass) throws -> Tensor
    /// The final norm, and the base model's output sites.
    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor
}

extension LanguageModel {
    /// Runs the batch and returns logits at the rows asked for (see `LogitRows`).
    /// `hooks` sees and may change every site it wants; `cancelled` is checked once per layer.
    public func forward(_ batch: TokenBatch, hooks: (any ForwardHooks)? = nil, logits: LogitRows = .all,
                        cancelled: CancellationCheck? = nil, recorder: KeyValueCache? = nil) throws -> Tensor {
        try validate(batch)
        let pass = ForwardPass(batch: batch, hooks: hooks, cancelled: cancelled, recorder: recorder)
        let x = try run(layers: 0..<dimensions.layers, on: try embed(pass), pass)
        return try unembed(try finalNorm(x, pass), logits, pass)
    }

    /// Layers `layers` in turn.
    public func run(layers: Range<Int>, on input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        var x = input
        for index in layers {
            try pass.checkCancelled()
            x = try layer(index, x, pass)
        }
        return x
    }

    /// lm_head at the rows `which` asks for: [rows, 1 or length, vocabulary], or the final
    /// hidden states [rows, length, hidden] for `.none`.
    public func unembed(_ final: Tensor, _ which: LogitRows, _ pass: ForwardPass) throws -> Tensor {
        let (rows, length, hidden) = (pass.rows, pass.length, dimensions.hidden)
        if which == .none { return final.reshaped([rows, length, hidden]) }
        let positions = which == .last ? 1 : length
        let logitShape = [rows, positions, dimensions.vocabulary]
        let headIn = try pass.hook(head.module.input, pass.rowsToUnembed(final, which), shape: [rows, positions, hidden])
        let logits = try pass.hook(head.module.output, head.map(headIn), shape: logitShape)
        if let cap = logitSoftcap { softcapInPlace(logits, cap) }
        return try pass.hook(.logits, logits, shape: logitShape).reshaped(logitShape)
    }

    /// lm_head's map.
    public var unembedding: Linear { head.map }

    public var logitSoftcap: Float? { nil }

    /// The typed error for a canonical site this model does not provide; nil when it does, or
    /// when `site` is not a canonical one.
    public func unprovided(_ site: Site) -> ModelError? {
        guard let canonical = CanonicalSite(site), !canonicalSites.contains(canonical.kind) else { return nil }
        return .siteNotProvided(site: canonical.path, architecture: architecture)
    }

    /// Every site in the order the forward pass reaches it (HF paths and canonical names),
    /// found by running two tiny batches; callers keep the result.
    public func discoverSites() throws -> [SiteInfo] { try SiteDiscovery.sites(of: self) }

    /// Checks a batch against the vocabulary and the context before any compute.
    public func validate(_ batch: TokenBatch) throws {
        guard batch.rows > 0, batch.sequences.allSatisfy({ !$0.isEmpty }) else { throw ModelError.emptyInput }
        if batch.length > dimensions.context { throw ModelError.tooLong(batch.length, limit: dimensions.context) }
        for tokens in batch.sequences {
            if let bad = tokens.first(where: { $0 < 0 || $0 >= dimensions.vocabulary }) {
                throw ModelError.tokenOutOfRange(bad, vocabulary: dimensions.vocabulary)
            }
        }
    }
}

/// One site as a client sees it: where it is, and the shape of its value for a batch of
/// `rows` x `length` tokens, with symbolic dims `batch` and `seq`.
public struct SiteInfo: Sendable, Equatable, Codable {
    public let site: String
    public let io: SiteIO
    /// Shape with -1 for the batch dim and -2 for the sequence dim.
    public let shape: [Int]
    /// True when HF returns a tuple here whose element 0 is this value (a GPT-2 block's output).
    public let tuple: Bool

    public init(_ site: String, _ io: SiteIO, shape: [Int], tuple: Bool = false) {
        self.site = site
        self.io = io
        self.shape = shape
        self.tuple = tuple
    }

    public static let batchDim = -1
    public static let sequenceDim = -2
}

/// A module of the HF model tree, printable the way `print(model)` prints it in PyTorch.
public struct ModuleNode: Sendable, Equatable, Codable {
    /// The attribute name under its parent ("h", "0", "c_attn"); empty for the root.
    public let name: String
    /// The dotted HF path ("transformer.h.0.attn"); empty for the root.
    public let path: String
    /// The PyTorch class name ("GPT2Block", "Linear").
    public let type: String
    /// What PyTorch prints inside the parentheses for a leaf ("in_features=768, ...").
    public let extra: String
    public let children: [ModuleNode]
    /// False for a module whose values no hook can see (Llama's rotary embedding: its cos and
    /// sin tables are computed once per model, not per pass); it has no sites.
    public let hasSites: Bool

    public init(name: String, path: String, type: String, extra: String = "", children: [ModuleNode] = [], hasSites: Bool = true) {
        self.name = name
        self.path = path
        self.type = type
        self.extra = extra
        self.children = children
        self.hasSites = hasSites
    }

    /// Every module path in the tree, depth first.
    public var allPaths: [String] {
        (path.isEmpty ? [] : [path]) + children.flatMap(\.allPaths)
    }

    /// The tree as PyTorch prints it, with runs of identical list items folded as
    /// `(0-11): 12 x GPT2Block(`.
    public func rendered() -> String {
        var lines = [String]()
        render(into: &lines, label: nil, indent: "")
        return lines.joined(separator: "\n")
    }

    private func render(into lines: inout [String], label: String?, indent: String) {
        let head = (label.map { "(\($0)): " } ?? "") + type
        if children.isEmpty {
            lines.append(indent + head + "(\(extra))")
            return
        }
        lines.append(indent + head + "(")
        let inner = indent + "  "
        var index = 0
        while index < children.count {
            let child = children[index]
            // Fold a run of list items (numeric names) with the same structure.
            var end = index + 1
            if Int(child.name) != nil {
                while end < children.count, Int(children[end].name) != nil, children[end].sameShape(as: child) { end += 1 }
            }
            if end - index > 1 {
                let count = end - index
                var folded = [String]()
                child.render(into: &folded, label: "\(children[index].name)-\(children[end - 1].name)", indent: inner)
                folded[0] = folded[0].replacingOccurrences(of: "): \(child.type)", with: "): \(count) x \(child.type)")
                lines.append(contentsOf: folded)
            } else {
                child.render(into: &lines, label: child.name, indent: inner)
            }
            index = end
        }
        lines.append(indent + ")")
    }

    /// Same types and extras all the way down (names of list items aside).
    private func sameShape(as other: ModuleNode) -> Bool {
        type == other.type && extra == other.extra && children.count == other.children.count
            && zip(children, other.children).allSatisfy { $0.name == $1.name && $0.sameShape(as: $1) }
    }
}
