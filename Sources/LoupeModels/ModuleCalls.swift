import LoupeTensor

/// What the trace op `call` runs for one module: its own computation, with its weights.
public struct ModuleCall: Sendable {
    /// What the module takes.
    public enum Input: Sendable, Equatable {
        /// x [..., width], row by row (a linear map, a norm, an MLP).
        case features(Int)
        /// Any shape, element by element (an activation).
        case elementwise
        /// Token ids of any shape, as float32 whole numbers below `vocabulary` (an embedding).
        case tokenIDs(vocabulary: Int)
        /// Hidden states [batch, seq, width] at positions 0..seq-1 (a decoder layer).
        case sequence(Int)
    }

    enum Body: Sendable {
        /// On x as rows [n, width], with a pass that has no hooks.
        case rows(@Sendable (Tensor, ForwardPass) throws -> Tensor)
        case tokens(@Sendable ([Int]) -> Tensor)
        /// The model's own `layer(index, x, pass)`.
        case layer(Int)
    }

    public let input: Input
    /// The last dimension of the result; nil: x's.
    public let outputWidth: Int?
    let body: Body

    static func features(in inputs: Int, out outputs: Int, _ body: @escaping @Sendable (Tensor, ForwardPass) throws -> Tensor) -> ModuleCall {
        ModuleCall(input: .features(inputs), outputWidth: outputs, body: .rows(body))
    }

    static func elementwise(_ body: @escaping @Sendable (Tensor, ForwardPass) throws -> Tensor) -> ModuleCall {
        ModuleCall(input: .elementwise, outputWidth: nil, body: .rows(body))
    }

    /// The result's shape for x of `shape`; nil when the module does not take that shape.
    public func outputShape(_ shape: [Int]) -> [Int]? {
        switch input {
        case .features(let width):
            guard shape.last == width else { return nil }
            return shape.dropLast() + [outputWidth ?? width]
        case .elementwise:
            return shape
        case .tokenIDs:
            return shape + [outputWidth ?? 0]
        case .sequence(let width):
            guard shape.count == 3, shape[2] == width, shape[0] > 0, shape[1] > 0 else { return nil }
            return shape
        }
    }

    /// What x must be, for errors.
    public var expected: String {
        switch input {
        case .features(let width): return "[..., \(width)]"
        case .elementwise: return "any shape"
        case .tokenIDs(let vocabulary): return "token ids below \(vocabulary), any shape"
        case .sequence(let width): return "[batch, seq, \(width)]"
        }
    }
}

/// The modules of one model the trace op `call` can run, and every parameter in HF's name,
/// shape and layout. `ModuleScope` fills it as modules are declared, so nothing of it is
/// written twice; it is complete once the model is built, and only read after that.
public final class ModuleTable: @unchecked Sendable {
    private var calls: [String: ModuleCall] = [:]
    private var values: [String: Tensor] = [:]
    /// Every parameter's name (`model.layers.0.mlp.up_proj.weight`), in the order the modules
    /// were declared (HF's registration order).
    public private(set) var parameterNames: [String] = []

    public init() {}

    /// What `call` runs for module `path`; nil when it cannot be called.
    public func call(_ path: String) -> ModuleCall? { calls[path] }

    /// The parameter `name` (`lm_head.weight`); nil when there is none.
    public func parameter(_ name: String) -> Tensor? { values[name] }

    func register(_ path: String, _ call: ModuleCall) { calls[path] = call }

    /// Registers, or replaces (a weight stored anew in another layout), a parameter.
    func register(_ name: String, parameter: Tensor) {
        if values.updateValue(parameter, forKey: name) == nil { parameterNames.append(name) }
    }
}

/// A module computed by other modules of its layer (an MLP): runs with the pass, which shows
/// its submodules' sites to the hooks, and is callable by the trace op `call` with a pass
/// that has none. Declared with `ModuleScope.callable`.
public protocol BlockModule: Sendable {
    var module: ModulePath { get }
    var inputWidth: Int { get }
    var outputWidth: Int { get }
    /// x [rows, inputWidth] → [rows, outputWidth], its own sites and its submodules' fired.
    func callAsFunction(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor
}

/// A gated MLP (Llama, Gemma): down(act(gate(x)) · up(x)), gate and up as one product;
/// `blocks.L.mlp.hidden` is down's input.
public struct GatedMLP: BlockModule {
    public let module: ModulePath
    public let layer: Int
    public let gateUp: FusedLinear
    public let activation: ActivationModule
    public let down: LinearModule

    public init(_ module: ModulePath, layer: Int, gateUp: FusedLinear, activation: ActivationModule, down: LinearModule) {
        self.module = module
        self.layer = layer
        self.gateUp = gateUp
        self.activation = activation
        self.down = down
    }

    public var inputWidth: Int { gateUp.map.inputSize }
    public var outputWidth: Int { down.map.outputSize }

    public func callAsFunction(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        try pass.call(module, x) { h in
            let projected = try pass.call(gateUp, h)
            let hidden = try pass.gated(activation, projected[0], projected[1])
            return try pass.call(down, try pass.hook(.mlpHidden(layer), hidden))
        }
    }
}

/// A plain MLP (GPT-2, GPT-NeoX): down(act(up(x))), then `dropout` (the identity in
/// inference) if it has one; `blocks.L.mlp.hidden` is down's input.
public struct PlainMLP: BlockModule {
    public let module: ModulePath
    public let layer: Int
    public let up: LinearModule
    public let activation: ActivationModule
    public let down: LinearModule
    public let dropout: ModulePath?

    public init(_ module: ModulePath, layer: Int, up: LinearModule, activation: ActivationModule, down: LinearModule,
                dropout: ModulePath? = nil) {
        self.module = module
        self.layer = layer
        self.up = up
        self.activation = activation
        self.down = down
        self.dropout = dropout
    }

    public var inputWidth: Int { up.map.inputSize }
    public var outputWidth: Int { down.map.outputSize }

    public func callAsFunction(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        try pass.call(module, x) { h in
            let hidden = try pass.call(activation, try pass.call(up, h))
            let out = try pass.call(down, try pass.hook(.mlpHidden(layer), hidden))
            guard let dropout else { return out }
            return try pass.identity(dropout, out)
        }
    }
}

extension LanguageModel {
    /// Module `path`'s own computation on x, with its weights, as the trace op `call` runs it:
    /// no hooks, nothing of any pass changes, and x is left as it was. x must be of a shape
    /// `modules.call(path)` takes (`ModuleCall.outputShape`; the caller checks it). Its kernels
    /// record on a recording gradient tape as any op's. Throws `tokenOutOfRange` for an
    /// embedding's id that is not a whole number in its vocabulary, `tooLong` for a decoder
    /// layer's sequence longer than the context.
    public func call(module path: String, _ x: Tensor) throws -> Tensor {
        guard let call = modules.call(path), let shape = call.outputShape(x.shape) else {
            preconditionFailure("\(path) cannot be called on \(x.shape)")
        }
        switch call.body {
        case .rows(let body):
            let rows = x.reshaped([-1, max(x.shape.last ?? 1, 1)])
            return try body(rows, ForwardPass(batch: TokenBatch([[0]]), hooks: nil, cancelled: nil)).reshaped(shape)
        case .tokens(let body):
            var ids = [Int]()
            ids.reserveCapacity(x.count)
            guard case .tokenIDs(let vocabulary) = call.input else { preconditionFailure("an embedding takes ids") }
            for value in x.toArray() {
                guard value >= 0, value < Float(vocabulary), value.rounded() == value else {
                    throw ModelError.tokenOutOfRange(value.isFinite && abs(value) < 1e18 ? Int(value.rounded(.down)) : -1,
                                                     vocabulary: vocabulary)
                }
                ids.append(Int(value))
            }
            return body(ids).reshaped(shape)
        case .layer(let index):
            let (batch, length) = (x.shape[0], x.shape[1])
            guard length <= dimensions.context else { throw ModelError.tooLong(length, limit: dimensions.context) }
            let pass = ForwardPass(batch: TokenBatch(Array(repeating: Array(repeating: 0, count: length), count: batch)),
                                   hooks: nil, cancelled: nil)
            // The layer adds into its input in place: it gets a copy.
            return try layer(index, x.copy().reshaped([batch * length, x.shape[2]]), pass).reshaped(shape)
        }
    }
}
