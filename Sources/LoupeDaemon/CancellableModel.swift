import LoupeModels
import LoupeTensor

/// A model that checks for cancellation before every layer it runs, whoever calls it.
///
/// `LanguageModel.forward` checks once per layer, but a sweep strings layers together itself
/// (`model.layer` on stacked runs), so the daemon hands sweeps this wrapper: a cancelled
/// sweep then stops within one layer too.
final class CancellableModel: LanguageModel {
    let base: any LanguageModel
    let cancelled: CancellationCheck

    init(_ base: any LanguageModel, cancelled: @escaping CancellationCheck) {
        self.base = base
        self.cancelled = cancelled
    }

    var architecture: String { base.architecture }
    var dimensions: ModelDimensions { base.dimensions }
    var moduleTree: ModuleNode { base.moduleTree }
    var weightBytes: Int { base.weightBytes }
    var unembedding: Linear { base.unembedding }

    func embed(_ pass: ForwardPass) throws -> Tensor { try base.embed(pass) }

    func layer(_ index: Int, _ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        if cancelled() { throw ModelError.cancelled }
        return try base.layer(index, x, pass)
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor { try base.finalNorm(x, pass) }
}
