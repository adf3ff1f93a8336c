import Foundation
import LoupeConformance
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// The suite is not vacuous: adapters broken in ways a real one could be fail the checks
/// that are about them.
final class BrokenAdapterTests: XCTestCase {
    let fixture = fixturesDirectory + "/models/llama-tiny"

    func inner() throws -> any LanguageModel {
        try LoadedModel.load(fixture, registry: testRegistry).model
    }

    func failedChecks(_ model: any LanguageModel) -> Set<String> {
        let report = ArchitectureConformance(model: model, tokenizer: nil, fixture: fixture, interventions: testInterventions).report()
        print(report)
        return Set(report.failures.map(\.check))
    }

    /// It declares attn.z but never shows it.
    func testADeclaredSiteThatNeverFires() throws {
        let model = WithoutSites(try inner(), removing: [.z], declaring: Set(CanonicalSite.Kind.allCases))
        let failed = failedChecks(model)
        XCTAssertTrue(failed.isSuperset(of: ["sites", "interventions", "sweeps"]), "\(failed)")
        XCTAssertFalse(failed.contains("padding"))
    }

    /// Its rows depend on the other rows' lengths: a padded batch is not each prompt alone.
    func testAPaddingDependentModel() throws {
        let failed = failedChecks(PaddingSensitive(try inner()))
        XCTAssertTrue(failed.isSuperset(of: ["padding", "interventions", "sweeps"]), "\(failed)")
        XCTAssertFalse(failed.contains("hf-parity"), "each sequence alone is still HF's")
    }

    /// It hands each layer's output on through a copy made outside the kernels: every
    /// number is right, but no gradient can flow back through it.
    func testAValueCopiedOutsideTheKernels() throws {
        XCTAssertEqual(failedChecks(CopiedOutsideKernels(try inner())), ["gradients"])
    }
}

/// Forwards everything to the model it wraps; each subclass breaks one thing.
class Wrapped: LanguageModel, @unchecked Sendable {
    let inner: any LanguageModel
    init(_ inner: any LanguageModel) { self.inner = inner }

    var architecture: String { inner.architecture }
    var dimensions: ModelDimensions { inner.dimensions }
    var moduleTree: ModuleNode { inner.moduleTree }
    var modules: ModuleTable { inner.modules }
    var weightBytes: Int { inner.weightBytes }
    var canonicalSites: Set<CanonicalSite.Kind> { inner.canonicalSites }
    var head: LinearModule { inner.head }

    func embed(_ pass: ForwardPass) throws -> Tensor { try inner.embed(pass) }
    func layer(_ index: Int, _ x: Tensor, _ pass: ForwardPass) throws -> Tensor { try inner.layer(index, x, pass) }
    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor { try inner.finalNorm(x, pass) }
}

/// Adds 1e-3 to the embeddings of every batch that has padding.
final class PaddingSensitive: Wrapped, @unchecked Sendable {
    override func embed(_ pass: ForwardPass) throws -> Tensor {
        let x = try inner.embed(pass)
        guard pass.padding.contains(where: { $0 > 0 }) else { return x }
        return Tensor(shape: x.shape, values: x.toArray().map { $0 + 1e-3 })
    }
}

/// Copies each layer's output element by element into a new tensor.
final class CopiedOutsideKernels: Wrapped, @unchecked Sendable {
    override func layer(_ index: Int, _ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let y = try inner.layer(index, x, pass)
        return Tensor(shape: y.shape, values: y.toArray())
    }
}
