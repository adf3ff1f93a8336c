import Foundation
import LoupeConformance
import LoupeModels
import LoupeSweeps
import LoupeTensor
import LoupeTestSupport
import LoupeTrace
import XCTest

/// An adapter that provides fewer canonical sites than every built-in one: sweeps and
/// traces that need a missing site throw a typed error naming the site and the
/// architecture, never crash, and the conformance suite holds it to what it declares.
final class MissingSiteTests: XCTestCase {
    static let removed: Set<CanonicalSite.Kind> = [.residPre, .z]

    func model() throws -> WithoutSites {
        let inner = try LoadedModel.load(fixturesDirectory + "/models/llama-tiny", registry: testRegistry).model
        return WithoutSites(inner, removing: Self.removed)
    }

    let clean = [5, 17, 300, 42, 8, 99, 23, 61]
    let corrupted = [5, 17, 300, 7, 8, 99, 140, 61]

    /// A typed error (the model's, a sweep's or a trace's) whose description names one of
    /// the removed sites and the architecture.
    func assertNamesMissingSite(_ error: Error, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(error is ModelError || error is SweepError || error is TraceError,
                      "\(what): \(type(of: error)) is not one of Loupe's typed errors: \(error)", file: file, line: line)
        let text = "\(error)"
        XCTAssertTrue(Self.removed.contains { text.contains($0.rawValue) }, "\(what): the error does not name the missing site: \(text)",
                      file: file, line: line)
        XCTAssertTrue(text.contains("llama"), "\(what): the error does not name the architecture: \(text)", file: file, line: line)
    }

    func testTheWrapperShowsExactlyWhatItDeclares() throws {
        let model = try model()
        let sites = Set(try model.discoverSites().map(\.site))
        XCTAssertFalse(sites.contains("blocks.0.resid_pre"))
        XCTAssertFalse(sites.contains("blocks.1.attn.z"))
        XCTAssertTrue(sites.contains("blocks.0.resid_post"))
        XCTAssertTrue(sites.contains("model.layers.1.self_attn.o_proj"))
    }

    func testSweepsNeedingAMissingSiteThrow() throws {
        let model = try model()
        let sweep = PatchingSweep(model: model, interventions: testInterventions)
        let metric = SweepMetric.logitDifference(answer: 3, wrong: 11)
        for kind in [SweepKind.heads, .residual, .headPositions, .mlp] {
            for intervention in [SweepIntervention.patch, .ablate(.zero)] {
                let request = SweepRequest(pairs: [SweepPair(clean: clean, corrupted: intervention == .patch ? corrupted : nil, metric: metric)],
                                           kind: kind, intervention: intervention)
                XCTAssertThrowsError(try sweep.run(request), "\(kind) \(intervention)") { assertNamesMissingSite($0, "sweep \(kind) \(intervention)") }
                XCTAssertThrowsError(try sweep.runPlain(request), "plain \(kind) \(intervention)") {
                    assertNamesMissingSite($0, "plain sweep \(kind) \(intervention)")
                }
            }
        }
        // Attribution reads each kind's own site alone (heads: blocks.L.attn.z).
        let request = SweepRequest(clean: clean, corrupted: corrupted, kind: .heads, metric: metric)
        for kinds in [[SweepKind.heads], [.residual, .headPositions]] {
            XCTAssertThrowsError(try AttributionSweep(model: model).run(request, kinds: kinds), "attribution \(kinds)") {
                assertNamesMissingSite($0, "attribution sweep \(kinds)")
            }
        }
    }

    func testTracesNeedingAMissingSiteThrow() throws {
        let runner = try TraceRunner(model: try model(), interventions: testInterventions)
        let read = Trace(invocations: [clean], nodes: [
            ["id": 0, "op": "get", "site": "blocks.0.attn.z", "io": "output", "invoke": 0],
            ["id": 1, "op": "save", "x": .ref(0), "name": "z"],
        ])
        XCTAssertThrowsError(try runner.run(read)) { error in
            assertNamesMissingSite(error, "a trace reading blocks.0.attn.z")
            XCTAssertEqual((error as? TraceError)?.code, .unknownSite)
        }
        let write = Trace(invocations: [clean], nodes: [
            ["id": 0, "op": "set", "site": "blocks.1.resid_pre", "io": "output", "invoke": 0, "value": 0],
        ])
        XCTAssertThrowsError(try runner.run(write)) { assertNamesMissingSite($0, "a trace writing blocks.1.resid_pre") }
        let patch = Trace(invocations: [clean, corrupted], nodes: [
            ["id": 0, "op": "intervene", "name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 1, "head": 0]],
        ])
        XCTAssertThrowsError(try runner.run(patch)) { assertNamesMissingSite($0, "head_patch at blocks.1.attn.z") }
        // What it does provide still works.
        let fine = Trace(invocations: [clean], nodes: [
            ["id": 0, "op": "get", "site": "blocks.1.resid_post", "io": "output", "invoke": 0],
            ["id": 1, "op": "save", "x": .ref(0), "name": "resid"],
        ])
        XCTAssertEqual(try runner.run(fine)["resid"]?.shape, [1, clean.count, 64])
    }

    /// The suite holds the wrapper to its declaration: its sites check passes, and every
    /// intervention and sweep over a site it lacks is a typed error, not a failure.
    func testTheSuiteAcceptsAnAdapterThatDeclaresFewerSites() throws {
        let model = try model()
        let report = ArchitectureConformance(model: model, tokenizer: nil, fixture: fixturesDirectory + "/models/llama-tiny",
                                             interventions: testInterventions).report()
        print(report)
        for check in report.checks where ["sites", "hf-parity", "padding", "hooks", "interventions", "sweeps"].contains(check.name) {
            XCTAssertEqual(check.failures, [], check.name)
        }
    }
}

/// A model that forwards to another but declares fewer canonical sites, and hides those
/// from every hook (so discovery, traces and sweeps see exactly what it declares).
final class WithoutSites: LanguageModel, @unchecked Sendable {
    let inner: any LanguageModel
    let removed: Set<CanonicalSite.Kind>
    let canonicalSites: Set<CanonicalSite.Kind>

    /// `declaring`: what it claims to provide (by default what it shows: the inner model's
    /// sites less those removed).
    init(_ inner: any LanguageModel, removing removed: Set<CanonicalSite.Kind>, declaring: Set<CanonicalSite.Kind>? = nil) {
        self.inner = inner
        self.removed = removed
        canonicalSites = declaring ?? inner.canonicalSites.subtracting(removed)
    }

    var architecture: String { inner.architecture }
    var dimensions: ModelDimensions { inner.dimensions }
    var moduleTree: ModuleNode { inner.moduleTree }
    var modules: ModuleTable { inner.modules }
    var weightBytes: Int { inner.weightBytes }
    var head: LinearModule { inner.head }

    func embed(_ pass: ForwardPass) throws -> Tensor { try inner.embed(filtered(pass)) }
    func layer(_ index: Int, _ x: Tensor, _ pass: ForwardPass) throws -> Tensor { try inner.layer(index, x, filtered(pass)) }
    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor { try inner.finalNorm(x, filtered(pass)) }

    /// The same pass, its hooks blind to the removed kinds.
    private func filtered(_ pass: ForwardPass) -> ForwardPass {
        pass.wrappingHooks { Hiding($0, removed) }
    }
}

/// Hooks that never see the canonical sites of `hidden` kinds.
final class Hiding: ForwardHooks {
    let inner: any ForwardHooks
    let hidden: Set<CanonicalSite.Kind>

    init(_ inner: any ForwardHooks, _ hidden: Set<CanonicalSite.Kind>) {
        self.inner = inner
        self.hidden = hidden
    }

    func wants(_ site: Site) -> Bool {
        if let canonical = CanonicalSite(site), hidden.contains(canonical.kind) { return false }
        return inner.wants(site)
    }

    func visit(_ site: Site, _ value: inout Tensor) throws { try inner.visit(site, &value) }
}
