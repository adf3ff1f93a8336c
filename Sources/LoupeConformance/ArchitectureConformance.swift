import Foundation
import LoupeModels
import LoupeTokenizers
import LoupeTrace

/// The contract every architecture adapter meets, checked on one fixture: a directory
/// holding the checkpoint (config.json and weights), its inputs (`cases.json`), the
/// reference outputs of HF transformers on the same weights (`expected.safetensors`) and
/// what the fixture declares about itself (`conformance.json`; `ConformanceFixture`).
///
/// The checks, each named in its failures:
///
/// - `sites`: every canonical site the model declares (`canonicalSites`) fires in every
///   block with its documented shape (`CanonicalSite.Kind.shape`), no undeclared one fires,
///   and each block's fire in order (its `resid_pre` first, its `resid_post` last, `logits`
///   after every block).
/// - `module-tree`: the module tree and the sites agree, as a researcher who knows nnsight
///   expects: every module HF calls has its `.input` and `.output` sites (a `ModuleList` is
///   never called; an `Embedding`, and a module holding one, takes token ids, so only its
///   output is a site), every site that is not canonical is a module of the tree, and a
///   `Linear`, an `Embedding` or a norm shows values of the widths it prints.
/// - `hf-parity`: each of the fixture's sequences alone gives HF's logits, and HF's
///   activations at the canonical sites the model declares, within 1e-4.
/// - `padding`: the sequences as one left-padded batch give, at every real position, the
///   logits of each sequence alone within 1e-5 (and HF's padded batch within 1e-4);
///   logits at the last position only are the last column of the full logits.
/// - `hooks`: a pass with every site watched computes what a pass with no hooks does,
///   and a continuation from cached keys and values what the full pass does.
/// - `generation`: greedy generation from the sequences as one left-padded batch, with the
///   keys and values kept between steps, gives at every step the logits of a full pass over
///   each row's prompt and tokens so far, alone, within 1e-5, hooks watching at every step.
/// - `module-calls`: every module with weights, every MLP and decoder layer is callable by
///   the trace op `call`, and reproduces on the forward pass's values what the pass computed;
///   the logit lens, an MLP and a layer called on HF's values give HF's, and the parameters
///   are HF's (`ModuleCallChecks`).
/// - `interventions`: every registered intervention this suite has cases for, run in a
///   batched trace (left-padded by a longer invocation), equals the same edit written as
///   hooks on the edited prompt alone; an intervention at a site the model does not
///   declare is a thrown error naming the site.
/// - `sweeps`: every sweep kind (residual, heads, head_positions, mlp) patched and ablated
///   (zero, mean, resample), and pairs of different lengths, equals the plain path
///   (`PatchingSweep.runPlain`, one full invocation per cell); a sweep over a site the
///   model does not declare is a thrown error naming the site.
/// - `gradients`: the backward through the forward pass against finite differences at the
///   sites the model declares, and against torch autograd where the fixture has its
///   gradients (`GradientChecks`).
/// - `tokenizer`: where the fixture has a tokenizer, decode(encode(s)) == s on a few
///   strings; a fixture without one says so in `conformance.json`, and is checked to have none.
///
/// `run()` returns the failures; `report()` also says what ran, what did not apply and how
/// long each check took, printable as it stands.
public struct ArchitectureConformance {
    public let model: any LanguageModel
    public let tokenizer: Tokenizer?
    /// The fixture directory.
    public let fixture: String
    public let interventions: InterventionRegistry

    /// Every check, in the order `report()` runs them.
    public static let checks = ["fixture", "sites", "module-tree", "hf-parity", "padding", "hooks", "generation", "module-calls", "interventions", "sweeps", "gradients", "tokenizer"]

    /// A model and tokenizer loaded from `fixture`, or any model standing for one (a wrapper).
    public init(model: any LanguageModel, tokenizer: Tokenizer?, fixture: String, interventions: InterventionRegistry) {
        self.model = model
        self.tokenizer = tokenizer
        self.fixture = fixture
        self.interventions = interventions
    }

    public init(model: LoadedModel, fixture: String, interventions: InterventionRegistry) {
        self.init(model: model.model, tokenizer: model.tokenizer, fixture: fixture, interventions: interventions)
    }

    /// Every failure of every check.
    public func run() -> [ConformanceFailure] { report().failures }

    /// Runs every check.
    public func report() -> ConformanceReport {
        var results = [ConformanceCheckResult]()
        let fixtureStart = Date()
        let loaded: ConformanceFixture
        do {
            loaded = try ConformanceFixture(directory: fixture)
        } catch {
            results.append(ConformanceCheckResult(name: "fixture", failures: ["\(error)"], seconds: Date().timeIntervalSince(fixtureStart)))
            return ConformanceReport(fixture: fixture, architecture: model.architecture, checks: results)
        }
        var context = CheckContext(model: model, tokenizer: tokenizer, fixture: loaded, interventions: interventions)
        results.append(ConformanceCheckResult(name: "fixture", failures: loaded.problems, notes: loaded.summary,
                                              seconds: Date().timeIntervalSince(fixtureStart)))
        let steps: [(String, (inout CheckContext) throws -> Void)] = [
            ("sites", { try SiteChecks.canonical(&$0) }),
            ("module-tree", { try SiteChecks.moduleTree(&$0) }),
            ("hf-parity", { try NumericChecks.parity(&$0) }),
            ("padding", { try NumericChecks.padding(&$0) }),
            ("hooks", { try NumericChecks.hooks(&$0) }),
            ("generation", { try NumericChecks.generation(&$0) }),
            ("module-calls", { try ModuleCallChecks.run(&$0) }),
            ("interventions", { try InterventionChecks.run(&$0) }),
            ("sweeps", { try SweepChecks.run(&$0) }),
            ("gradients", { try GradientChecks.run(&$0) }),
            ("tokenizer", { try TokenizerCheck.run(&$0) }),
        ]
        for (name, body) in steps {
            let start = Date()
            context.begin()
            if let reason = loaded.notApplicable[name] {
                context.notApplicable = reason
                if name == "tokenizer" { TokenizerCheck.checkDeclaredAbsent(&context) }
            } else {
                do { try body(&context) } catch { context.fail("stopped by an error: \(error)") }
            }
            results.append(ConformanceCheckResult(name: name, failures: context.failures, notes: context.notes,
                                                  notApplicable: context.notApplicable, seconds: Date().timeIntervalSince(start)))
        }
        return ConformanceReport(fixture: fixture, architecture: model.architecture, checks: results)
    }
}

/// One failed expectation of one check.
public struct ConformanceFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The check's name (`ArchitectureConformance.checks`).
    public let check: String
    public let message: String

    public init(check: String, message: String) {
        self.check = check
        self.message = message
    }

    public var description: String { "\(check): \(message)" }
}

/// What one check found.
public struct ConformanceCheckResult: Sendable {
    public let name: String
    public let failures: [String]
    /// What it checked, or chose not to, worth printing (a fixture without a tokenizer, an
    /// intervention the suite has no case for).
    public let notes: [String]
    /// Why the check does not apply, as the fixture declares it; nil when it ran.
    public let notApplicable: String?
    public let seconds: Double

    public init(name: String, failures: [String], notes: [String] = [], notApplicable: String? = nil, seconds: Double) {
        self.name = name
        self.failures = failures
        self.notes = notes
        self.notApplicable = notApplicable
        self.seconds = seconds
    }

    public var passed: Bool { failures.isEmpty }
}

/// Every check's result on one fixture.
public struct ConformanceReport: Sendable, CustomStringConvertible {
    public let fixture: String
    public let architecture: String
    public let checks: [ConformanceCheckResult]

    public var failures: [ConformanceFailure] {
        checks.flatMap { check in check.failures.map { ConformanceFailure(check: check.name, message: $0) } }
    }

    public var seconds: Double { checks.map(\.seconds).reduce(0, +) }

    /// A line per check (pass, FAIL or n/a, its time), then its failures and notes indented.
    public var description: String {
        let name = URL(fileURLWithPath: fixture).lastPathComponent
        let failed = checks.filter { !$0.passed }.count
        var lines = ["\(name) (\(architecture)): " + (failed == 0 ? "conforms" : "\(failed) of \(checks.count) checks fail")
                     + String(format: ", %.2f s", seconds)]
        for check in checks {
            let status = check.notApplicable != nil ? "n/a " : check.passed ? "pass" : "FAIL"
            let padded = check.name.padding(toLength: 14, withPad: " ", startingAt: 0)
            lines.append("  \(padded) \(status) " + String(format: "%6.2f s", check.seconds))
            if let reason = check.notApplicable { lines.append("      not applicable: \(reason)") }
            for failure in check.failures { lines.append("      - \(failure)") }
            for note in check.notes { lines.append("      \(note)") }
        }
        return lines.joined(separator: "\n")
    }
}

/// What the checks share while they run: the model, the fixture, the sites found once,
/// and the current check's findings.
struct CheckContext {
    let model: any LanguageModel
    let tokenizer: Tokenizer?
    let fixture: ConformanceFixture
    let interventions: InterventionRegistry
    private(set) var failures: [String] = []
    private(set) var notes: [String] = []
    var notApplicable: String?
    private var discovered: [SiteInfo]?

    init(model: any LanguageModel, tokenizer: Tokenizer?, fixture: ConformanceFixture, interventions: InterventionRegistry) {
        self.model = model
        self.tokenizer = tokenizer
        self.fixture = fixture
        self.interventions = interventions
    }

    mutating func begin() {
        failures = []
        notes = []
        notApplicable = nil
    }

    mutating func fail(_ message: String) { failures.append(message) }
    mutating func note(_ message: String) { notes.append(message) }

    /// The model's sites, found once.
    mutating func sites() throws -> [SiteInfo] {
        if let discovered { return discovered }
        let found = try model.discoverSites()
        discovered = found
        return found
    }

    /// True when the model declares every canonical site in `sites`.
    func declares(_ sites: [CanonicalSite]) -> Bool { sites.allSatisfy { model.canonicalSites.contains($0.kind) } }
}
