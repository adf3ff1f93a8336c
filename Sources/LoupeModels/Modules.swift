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

/// A module whose computation is a function of its input alone, with its own weights: the
/// layer code and the trace op `call` run the same `callAsFunction`, so each is defined once.
public protocol CallableModule: Sendable {
    var module: ModulePath { get }
    /// x [..., in] → [..., out].
    func callAsFunction(_ x: Tensor) -> Tensor
}

/// A linear map declared as one module (`Linear`, GPT-2's `Conv1D`).
public struct LinearModule: CallableModule {
    public let module: ModulePath
    public let map: Linear
    /// The table its declaration registered it in: a fusion of it registers its part there.
    let table: ModuleTable

    public func callAsFunction(_ x: Tensor) -> Tensor { map(x) }
}

/// Linear modules of one input computed as one product (Llama's q, k and v; its gate and up):
/// the parts' maps side by side in one input-major matrix (`Linear.fused`), each part still
/// its own module with its own sites, and callable as its own columns of the product. The
/// parts' separate weights are not kept: each part's parameters are views of the fused ones.
public struct FusedLinear: Sendable {
    public let parts: [ModulePath]
    public let widths: [Int]
    public let map: Linear

    public init(_ modules: [LinearModule]) {
        parts = modules.map(\.module)
        widths = modules.map(\.map.outputSize)
        let map = Linear.fused(modules.map(\.map))
        self.map = map
        var column = 0
        for (part, width) in zip(modules, widths) {
            let columns = column..<(column + width)
            part.table.register(part.module.path, .features(in: map.inputSize, out: width) { x, _ in
                map(x).slice(axis: 1, columns)
            })
            part.table.register(part.module.path + ".weight", parameter: map.weight.slice(axis: 1, columns).permuted([1, 0]))
            if part.map.bias != nil, let bias = map.bias {
                part.table.register(part.module.path + ".bias", parameter: bias.slice(axis: 0, columns))
            }
            column += width
        }
    }
}

/// An embedding table declared as one module; `scale` multiplies what it looks up (Gemma's
/// scaled embedding).
public struct EmbeddingModule: Sendable {
    public let module: ModulePath
    /// [count, width].
    public let table: Tensor
    public let scale: Float?

    /// The rows of `ids` [ids.count, width], scaled.
    public func callAsFunction(_ ids: [Int]) -> Tensor {
        let rows = embeddingLookup(table, ids)
        if let scale { scaleInPlace(rows, scale) }
        return rows
    }
}

/// What a norm computes over the last dimension.
public enum NormKind: Sendable {
    /// torch.nn.LayerNorm: (x − mean) / √(var + eps) · weight + bias.
    case layer
    /// RMSNorm: x / √(mean(x²) + eps) · weight.
    case rms
    /// RMSNorm scaling by (1 + weight) (Gemma), the sum formed once in float32.
    case rmsPlusOne
}

/// A norm declared as one module (LayerNorm, RMSNorm, Gemma's RMSNorm), with its epsilon.
public struct NormModule: CallableModule {
    public let module: ModulePath
    public let kind: NormKind
    /// The weight as HF stores it (for `rmsPlusOne`, w of 1 + w).
    public let weight: Tensor
    public let bias: Tensor?
    public let epsilon: Float
    /// What the rows are multiplied by: `weight`, or 1 + weight.
    private let scale: Tensor

    init(module: ModulePath, kind: NormKind, weight: Tensor, bias: Tensor?, epsilon: Float) {
        self.module = module
        self.kind = kind
        self.weight = weight
        self.bias = bias
        self.epsilon = epsilon
        if kind == .rmsPlusOne {
            scale = weight.copy()
            for i in 0..<scale.count { scale.data[i] += 1 }  // in float32, as HF's 1.0 + weight.float()
        } else {
            scale = weight
        }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch kind {
        case .layer: return layerNorm(x, weight: scale, bias: bias ?? Tensor(zeros: scale.shape), eps: epsilon)
        case .rms, .rmsPlusOne: return rmsNorm(x, weight: scale, eps: epsilon)
        }
    }
}

/// An activation declared as a leaf module (`act_fn`), element-wise.
public struct ActivationModule: CallableModule {
    public enum Function: Sendable {
        /// x · sigmoid(x).
        case silu
        /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
        case geluTanh
        /// GELU with the exact error function (torch's default).
        case geluErf
    }

    public let module: ModulePath
    public let function: Function

    /// The fused gated kernel's activation, when there is one.
    var kernel: Activation? {
        switch function {
        case .silu: return .silu
        case .geluTanh: return .geluTanh
        case .geluErf: return nil
        }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        if let kernel { return gated(kernel, x.reshaped([-1, max(x.shape.last ?? 1, 1)]), nil).reshaped(x.shape) }
        let y = x.copy()
        geluErfInPlace(y)
        return y
    }
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
    /// What `call` can run and the parameters, shared by the whole tree.
    public let modules: ModuleTable
    private var children: [ModuleScope] = []
    /// Float32 bytes of the weights declared under this scope (a tied matrix counted once).
    private var ownBytes = 0

    /// The root of a model's tree: the `*ForCausalLM` class.
    public convenience init(root type: String, weights: WeightReader) {
        self.init(name: "", path: "", type: type, extra: "", weights: weights, modules: ModuleTable())
    }

    private init(name: String, path: String, type: String, extra: String, weights: WeightReader, modules: ModuleTable) {
        self.name = name
        self.path = path
        self.type = type
        self.extra = extra
        self.weights = weights
        self.modules = modules
    }

    public var module: ModulePath { ModulePath(path) }

    /// A submodule: a container whose own children are declared on the scope returned.
    public func child(_ name: String, _ type: String, extra: String = "") -> ModuleScope {
        let scope = ModuleScope(name: name, path: path.isEmpty ? name : "\(path).\(name)", type: type, extra: extra,
                                weights: weights, modules: modules)
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

    /// The weight `name` of this module (`weight`, `bias`), of `shape`, registered as its
    /// parameter (`ModuleTable.parameter`).
    public func weight(_ name: String, _ shape: [Int]) throws -> Tensor {
        let tensor = try weights("\(path).\(name)", shape)
        ownBytes += 4 * tensor.count
        modules.register("\(path).\(name)", parameter: tensor)
        return tensor
    }

    /// Makes this module callable by the trace op `call` as `block` (an MLP), and returns it.
    @discardableResult
    public func callable<Block: BlockModule>(_ block: Block) -> Block {
        modules.register(path, .features(in: block.inputWidth, out: block.outputWidth) { x, pass in try block(x, pass) })
        return block
    }

    /// A decoder layer (a block of the model's `ModuleList`), item `index`: callable by the
    /// trace op `call` as the model's own `layer(index, x, pass)` on x [batch, seq, width].
    public func decoderLayer(_ index: Int, _ type: String, width: Int) -> ModuleScope {
        let scope = child("\(index)", type)
        modules.register(scope.path, ModuleCall(input: .sequence(width), outputWidth: width, body: .layer(index)))
        return scope
    }

    /// An activation leaf (`act_fn`), callable element-wise.
    public func activation(_ name: String, _ type: String, _ function: ActivationModule.Function, extra: String = "") -> ActivationModule {
        let activation = ActivationModule(module: child(name, type, extra: extra).module, function: function)
        modules.register(activation.module.path, .elementwise { x, _ in activation(x) })
        return activation
    }

    /// Registers `module` as callable on [..., in] → [..., out].
    private func register<M: CallableModule>(_ module: M, in inputs: Int, out outputs: Int) -> M {
        modules.register(module.module.path, .features(in: inputs, out: outputs) { x, _ in module(x) })
        return module
    }

    /// `torch.nn.Linear`: weight [out, in], optional bias [out]. `inputMajor` stores it
    /// transposed once, for a layer whose product runs on few rows (see `Linear.fused`).
    public func linear(_ name: String, in inputs: Int, out outputs: Int, bias: Bool, inputMajor: Bool = false) throws -> LinearModule {
        let scope = child(name, "Linear", extra: "in_features=\(inputs), out_features=\(outputs), bias=\(bias ? "True" : "False")")
        var map = Linear(weight: try scope.weight("weight", [outputs, inputs]),
                         bias: bias ? try scope.weight("bias", [outputs]) : nil, layout: .outputMajor)
        if inputMajor {
            map = map.inputMajor()
            // The parameter in HF's [out, in], as a view of the transposed copy (the original is not kept).
            modules.register("\(scope.path).weight", parameter: map.weight.permuted([1, 0]))
            if let bias = map.bias { modules.register("\(scope.path).bias", parameter: bias) }
        }
        return register(LinearModule(module: scope.module, map: map, table: modules), in: inputs, out: outputs)
    }

    /// GPT-2's `Conv1D`: weight [in, out] and bias [out].
    public func conv1D(_ name: String, in inputs: Int, out outputs: Int) throws -> LinearModule {
        let scope = child(name, "Conv1D")
        let map = Linear(weight: try scope.weight("weight", [inputs, outputs]), bias: try scope.weight("bias", [outputs]), layout: .inputMajor)
        return register(LinearModule(module: scope.module, map: map, table: modules), in: inputs, out: outputs)
    }

    /// An `lm_head` that reuses `tied`'s table (tie_word_embeddings): declared in the tree, no
    /// weights of its own.
    public func tiedLinear(_ name: String, to tied: EmbeddingModule) -> LinearModule {
        let (count, width) = (tied.table.shape[0], tied.table.shape[1])
        let scope = child(name, "Linear", extra: "in_features=\(width), out_features=\(count), bias=False")
        modules.register("\(scope.path).weight", parameter: tied.table)
        return register(LinearModule(module: scope.module, map: Linear(weight: tied.table, layout: .outputMajor), table: modules),
                        in: width, out: count)
    }

    /// An `nn.Embedding` (or a subclass `type`, such as Gemma's scaled one, whose lookups are
    /// multiplied by `scale`) of `count` rows.
    public func embedding(_ name: String, count: Int, width: Int, type: String = "Embedding",
                          paddingIndex: Int? = nil, scale: Float? = nil) throws -> EmbeddingModule {
        let scope = child(name, type, extra: "\(count), \(width)" + (paddingIndex.map { ", padding_idx=\($0)" } ?? ""))
        let embedding = EmbeddingModule(module: scope.module, table: try scope.weight("weight", [count, width]), scale: scale)
        modules.register(scope.path, ModuleCall(input: .tokenIDs(vocabulary: count), outputWidth: width, body: .tokens { embedding($0) }))
        return embedding
    }

    /// A norm of `type` and `kind` over `width` features: `weight` [width], and `bias` [width]
    /// when it has one.
    public func norm(_ name: String, _ type: String, _ kind: NormKind, width: Int, epsilon: Float, bias: Bool = false,
                     extra: String) throws -> NormModule {
        let scope = child(name, type, extra: extra)
        let norm = NormModule(module: scope.module, kind: kind, weight: try scope.weight("weight", [width]),
                              bias: bias ? try scope.weight("bias", [width]) : nil, epsilon: epsilon)
        return register(norm, in: width, out: width)
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

    /// `module` on x, its sites fired.
    @inline(__always)
    public func call<M: CallableModule>(_ module: M, _ x: Tensor) throws -> Tensor {
        try call(module.module, x) { module($0) }
    }

    /// Looks `ids` up in `embedding`; the hooks see the output.
    public func call(_ embedding: EmbeddingModule, _ ids: [Int]) throws -> Tensor {
        try hook(embedding.module.output, embedding(ids))
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

    /// activation(gate) · up, a gated MLP's inner value: one kernel when no hook watches (and
    /// the activation has one), else act_fn's output shown as its own site before the product.
    public func gated(_ activation: ActivationModule, _ gate: Tensor, _ up: Tensor) throws -> Tensor {
        if !hasHooks, let kernel = activation.kernel { return LoupeTensor.gated(kernel, gate, up) }
        let activated = try call(activation, gate)
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
