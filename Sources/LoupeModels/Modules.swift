import LoupeFormats
import LoupeTensor

/// A module of the HF tree, as a layer's code refers to it: where it sits, and so the two
/// sites a forward pass shows its input and output at.
public struct ModulePath: Sendable {
    public let path: String
    public let input: Site
    public let output: Site

    init(_ path: String) {
        self.path = path
        input = Site(path, .input)
        output = Site(path, .output)
    }
}

/// A linear map declared as one module of the tree (`Linear`, GPT-2's `Conv1D`).
public struct LinearModule: Sendable {
    public let module: ModulePath
    public let map: Linear
}

/// Linear modules of one input computed as one product (Llama's q, k and v; its gate and up):
/// the parts' maps side by side in one input-major matrix (`Linear.fused`), each part still
/// its own module with its own sites. The parts' separate weights are not kept.
public struct FusedLinear: Sendable {
    public let parts: [ModulePath]
    public let widths: [Int]
    public let map: Linear

    public init(_ modules: [LinearModule]) {
        parts = modules.map(\.module)
        widths = modules.map(\.map.outputSize)
        map = Linear.fused(modules.map(\.map))
    }
}

/// An embedding table declared as one module.
public struct EmbeddingModule: Sendable {
    public let module: ModulePath
    /// [count, width].
    public let table: Tensor
}

/// A norm's weights declared as one module (LayerNorm, RMSNorm).
public struct NormModule: Sendable {
    public let module: ModulePath
    public let weight: Tensor
    public let bias: Tensor?
}

/// Declares an architecture's modules once each, in the order HF registers them. Each
/// declaration loads the module's weights under their HF names (checked for shape and
/// finiteness), adds the module to the tree `print(model)` shows, and returns the module,
/// which knows its own hook sites: the weights, the tree and the hooks cannot disagree.
///
///     let model = root.child("model", "LlamaModel")
///     let embed = try model.embedding("embed_tokens", count: vocabulary, width: hidden)
public final class ModuleScope {
    public let path: String
    private let name: String
    private let type: String
    private let extra: String
    private var hasSites = true
    private let weights: WeightReader
    private var children: [ModuleScope] = []
    /// Float32 bytes of the weights declared under this scope (a tied matrix counted once).
    private var ownBytes = 0

    /// The root of a model's tree: the `*ForCausalLM` class.
    public convenience init(root type: String, weights: WeightReader) {
        self.init(name: "", path: "", type: type, extra: "", weights: weights)
    }

    private init(name: String, path: String, type: String, extra: String, weights: WeightReader) {
        self.name = name
        self.path = path
        self.type = type
        self.extra = extra
        self.weights = weights
    }

    public var module: ModulePath { ModulePath(path) }

    /// A submodule: a container whose own children are declared on the scope returned.
    public func child(_ name: String, _ type: String, extra: String = "") -> ModuleScope {
        let scope = ModuleScope(name: name, path: path.isEmpty ? name : "\(path).\(name)", type: type, extra: extra, weights: weights)
        children.append(scope)
        return scope
    }

    /// A module without weights (an activation, a dropout, a rotary table). `sites: false`
    /// declares that the forward pass shows no hook its values (ModuleNode.hasSites).
    @discardableResult
    public func leaf(_ name: String, _ type: String, extra: String = "", sites: Bool = true) -> ModulePath {
        let scope = child(name, type, extra: extra)
        scope.hasSites = sites
        return scope.module
    }

    /// The weight `name` of this module (`weight`, `bias`), of `shape`.
    public func weight(_ name: String, _ shape: [Int]) throws -> Tensor {
        let tensor = try weights("\(path).\(name)", shape)
        ownBytes += 4 * tensor.count
        return tensor
    }

    /// `torch.nn.Linear`: weight [out, in], optional bias [out]. `inputMajor` stores it
    /// transposed once, for a layer whose product runs on few rows (see `Linear.fused`).
    public func linear(_ name: String, in inputs: Int, out outputs: Int, bias: Bool, inputMajor: Bool = false) throws -> LinearModule {
        let scope = child(name, "Linear", extra: "in_features=\(inputs), out_features=\(outputs), bias=\(bias ? "True" : "False")")
        let map = Linear(weight: try scope.weight("weight", [outputs, inputs]),
                         bias: bias ? try scope.weight("bias", [outputs]) : nil, layout: .outputMajor,
                         blocks: weights.blocks("\(scope.path).weight"))
        return LinearModule(module: scope.module, map: inputMajor ? map.inputMajor() : map)
    }

    /// GPT-2's `Conv1D`: weight [in, out] and bias [out].
    public func conv1D(_ name: String, in inputs: Int, out outputs: Int) throws -> LinearModule {
        let scope = child(name, "Conv1D")
        return LinearModule(module: scope.module, map: Linear(weight: try scope.weight("weight", [inputs, outputs]),
                                                              bias: try scope.weight("bias", [outputs]), layout: .inputMajor))
    }

    /// An `lm_head` that reuses `tied`'s table (tie_word_embeddings): declared in the tree, no
    /// weights of its own.
    public func tiedLinear(_ name: String, to tied: EmbeddingModule) -> LinearModule {
        let (count, width) = (tied.table.shape[0], tied.table.shape[1])
        let scope = child(name, "Linear", extra: "in_features=\(width), out_features=\(count), bias=False")
        return LinearModule(module: scope.module, map: Linear(weight: tied.table, layout: .outputMajor,
                                                              blocks: weights.blocks("\(tied.module.path).weight")))
    }

    /// An `nn.Embedding` (or a subclass `type`, such as Gemma's scaled one) of `count` rows.
    public func embedding(_ name: String, count: Int, width: Int, type: String = "Embedding",
                          paddingIndex: Int? = nil) throws -> EmbeddingModule {
        let scope = child(name, type, extra: "\(count), \(width)" + (paddingIndex.map { ", padding_idx=\($0)" } ?? ""))
        return EmbeddingModule(module: scope.module, table: try scope.weight("weight", [count, width]))
    }

    /// A norm of `type` over `width` features: `weight` [width], and `bias` [width] when it has one.
    public func norm(_ name: String, _ type: String, width: Int, bias: Bool, extra: String) throws -> NormModule {
        let scope = child(name, type, extra: extra)
        return NormModule(module: scope.module, weight: try scope.weight("weight", [width]),
                          bias: bias ? try scope.weight("bias", [width]) : nil)
    }

    /// The tree as declared.
    public var tree: ModuleNode {
        ModuleNode(name: name, path: path, type: type, extra: extra, children: children.map(\.tree), hasSites: hasSites)
    }

    /// Float32 bytes of every weight declared in the tree.
    public var weightBytes: Int { ownBytes + children.reduce(0) { $0 + $1.weightBytes } }
}

extension ForwardPass {
    /// Runs `body` as `module`: the hooks see its input, then its output, and may change either.
    /// `shape`: what the hooks see both as, when not [rows, length, features] (a norm over
    /// each head sees [rows, length, heads, head_dim]). `tuple`: HF returns a tuple here whose
    /// element 0 is the value (a GPT-2 block's output).
    @inline(__always)
    public func call(_ module: ModulePath, _ x: Tensor, shape: [Int]? = nil, tuple: Bool = false,
                     _ body: (Tensor) throws -> Tensor) throws -> Tensor {
        guard hasHooks else { return try body(x) }
        var input = x
        try fire(module.input, &input, shape: shape)
        var output = try body(input)
        try fire(module.output, &output, shape: shape, tuple: tuple)
        return output
    }

    /// `linear` on x, its sites fired.
    @inline(__always)
    public func call(_ linear: LinearModule, _ x: Tensor) throws -> Tensor {
        try call(linear.module, x) { linear.map($0) }
    }

    /// Looks `ids` up in `embedding`; the hooks see the output.
    public func call(_ embedding: EmbeddingModule, _ ids: [Int]) throws -> Tensor {
        try hook(embedding.module.output, embeddingLookup(embedding.table, ids))
    }

    /// The fused modules on x: each part's input site sees x, then each part's output site
    /// its own columns of the one product.
    public func call(_ fused: FusedLinear, _ x: Tensor) throws -> [Tensor] {
        var input = x
        for part in fused.parts { try fire(part.input, &input) }
        let product = fused.map(input)
        var column = 0
        return try zip(fused.parts, fused.widths).map { part, width in
            defer { column += width }
            return try hook(part.output, product.slice(axis: 1, column..<(column + width)))
        }
    }

    /// Causal self-attention of layer `l`, `output`(softmax(q kᵀ · scale) v), from projected
    /// q [rows, heads · headDim] and k, v [rows, keyValueHeads · headDim], q and k already
    /// rotated. The canonical sites attn.q, attn.k, attn.v, attn.pattern and attn.z fire in
    /// that order, `dropout` (GPT-2's attention dropout, the identity in inference) sees the
    /// pattern, and `output`'s sites its input and output. `window` and `softcap` as
    /// `attentionPattern`'s.
    public func attend(layer l: Int, q: Tensor, k: Tensor, v: Tensor, heads: Int, keyValueHeads: Int, headDim: Int,
                       scale: Float, window: Int? = nil, softcap: Float? = nil, dropout: ModulePath? = nil,
                       output: LinearModule) throws -> Tensor {
        let q = try hook(.q(l), q, shape: [rows, length, heads, headDim])
        let k = try hook(.k(l), k, shape: [rows, length, keyValueHeads, headDim])
        let v = try hook(.v(l), v, shape: [rows, length, keyValueHeads, headDim])
        let geometry = attentionGeometry(heads: heads, keyValueHeads: keyValueHeads, headDim: headDim)
        let (keys, values) = attentionInputs(layer: l, keys: k, values: v)
        var pattern = attentionPattern(q: q, k: keys, geometry: geometry, scale: scale, window: window, softcap: softcap)
        pattern = try hook(.pattern(l), pattern, shape: pattern.shape)
        if let dropout { pattern = try identity(dropout, pattern, shape: pattern.shape) }
        var z = try hook(output.module.input, attendValues(pattern: pattern, v: values, geometry: geometry))
        z = try hook(.z(l), z, shape: [rows, length, heads, headDim])
        return try hook(output.module.output, output.map(z))
    }

    /// activation(gate) · up, a gated MLP's inner value, its act_fn declared as `module`: one
    /// kernel when no hook watches, else act_fn's output shown as its own site before the product.
    public func gated(_ module: ModulePath, _ activation: Activation, _ gate: Tensor, _ up: Tensor) throws -> Tensor {
        guard hasHooks else { return LoupeTensor.gated(activation, gate, up) }
        let activated = try call(module, gate) { LoupeTensor.gated(activation, $0, nil) }
        multiplyInPlace(activated, up)
        return activated
    }

    /// Shows `value` at a module's side or a canonical site, and returns it as the hooks left it.
    @inline(__always)
    public func hook(_ site: Site, _ value: Tensor, shape: [Int]? = nil, tuple: Bool = false) throws -> Tensor {
        guard hasHooks else { return value }
        var seen = value
        try fire(site, &seen, shape: shape, tuple: tuple)
        return seen
    }

    @inline(__always)
    public func hook(_ site: CanonicalSite, _ value: Tensor, shape: [Int]? = nil) throws -> Tensor {
        guard hasHooks else { return value }
        return try hook(site.site, value, shape: shape)
    }

    /// A module that passes its value through unchanged in inference (dropout): its input
    /// and output sites both see it.
    @inline(__always)
    public func identity(_ module: ModulePath, _ x: Tensor, shape: [Int]? = nil) throws -> Tensor {
        guard hasHooks else { return x }
        let input = try hook(module.input, x, shape: shape)
        return try hook(module.output, input, shape: shape)
    }
}
