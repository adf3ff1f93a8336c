import LoupeTensor

/// Hooks that keep, for each site they are given, the site's value and, once the tape's
/// backward has run, the gradient that flowed through the value where the site fired.
public final class GradientRecorder: ForwardHooks {
    public let sites: Set<Site>
    public private(set) var values: [Site: Tensor] = [:]
    public private(set) var gradients: [Site: Tensor] = [:]
    private let keepValues: Bool

    public init(_ sites: [Site], keepValues: Bool = true) {
        self.sites = Set(sites)
        self.keepValues = keepValues
    }

    public func wants(_ site: Site) -> Bool { sites.contains(site) }

    public func visit(_ site: Site, _ value: inout Tensor) throws {
        if keepValues { values[site] = value.detachedCopy() }
        guard let tape = GradientTape.current else { return }
        let view = GradientView(value)
        tape.probe(value) { [unowned self] gradients in
            gradients.of(view).map { self.gradients[site] = $0.copy() }
        }
    }
}

/// What a forward pass under a gradient tape and its backward give.
public struct BackwardResult {
    /// The forward pass's logits (`LanguageModel.forward`'s).
    public let logits: Tensor
    /// The scalar differentiated.
    public let metric: Float
    /// Bytes the records copied, and the most the records and gradients held at once.
    public let savedBytes: Int
    public let peakBytes: Int
}

extension LanguageModel {
    /// Runs `batch` under a gradient tape, then sends the gradient of `metric(logits)` (a
    /// one-element tensor computed with LoupeTensor ops) back through the pass: `hooks` (a
    /// `GradientRecorder`, say) see the forward and keep what they probed.
    public func backward(_ batch: TokenBatch, hooks: any ForwardHooks, logits: LogitRows = .all,
                         cancelled: CancellationCheck? = nil, metric: (Tensor) throws -> Tensor) throws -> BackwardResult {
        let tape = GradientTape()
        let (output, scalar) = try tape.recording {
            let output = try forward(batch, hooks: hooks, logits: logits, cancelled: cancelled)
            return (output, try metric(output))
        }
        precondition(scalar.count == 1, "the metric must be one number, got shape \(scalar.shape)")
        let value = scalar.contiguous().data[0]
        try tape.backward(from: scalar, seed: Tensor(shape: scalar.shape, values: [1]))
        return BackwardResult(logits: output, metric: value, savedBytes: tape.savedBytes, peakBytes: tape.peakBytes)
    }
}

extension ModelDimensions {
    /// An upper bound on the bytes a backward through one forward pass of `rows` sequences of
    /// `length` token slots holds at once, `logitRows` slots of them unembedded: what its
    /// records save, and the gradients alive at once. A limit reads it to refuse a backward
    /// before it starts. Per layer and slot the kernels save at most the norms' inputs, q, k
    /// and v (q and k twice where heads are normalized), the MLP's inner values (gate and up,
    /// or the activation's input) and the attention pattern's row, twice (the pattern's own
    /// backward and the values'); the pattern makes the bound grow with the square of the length.
    /// BackwardMemoryTests measures every fixture architecture and SmolLM2 against it.
    public func backwardBytes(rows: Int, length: Int, logitRows: Int) -> Int {
        let slots = rows * length
        let attention = (heads + 2 * keyValueHeads) * headDim
        let saved = layers * slots * (4 * hidden + 3 * intermediate + 2 * attention + 2 * heads * length)
            + slots * hidden + logitRows * vocabulary
        // Gradients alive at once: the residual stream's, one layer's values', the logits'.
        let live = slots * (6 * hidden + 4 * intermediate + 2 * attention + 3 * heads * length) + logitRows * vocabulary
        return 4 * (saved + live)
    }
}
