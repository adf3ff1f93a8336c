import ArgumentParser
import BuiltInPlugins
import Foundation
import LoupeConformance
import LoupeModels
import LoupePlugin

/// `loupe conformance FIXTURE [--plugin PATH]`: the conformance suite every architecture
/// passes (Sources/LoupeConformance), run on a fixture with the built-in plugins and any
/// run-time ones, as the daemon would load them. For plugin authors: their adapter gets the
/// same checks as the built-in ones.
struct Conformance: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check an architecture against a fixture: sites, module tree, reference logits, padding, interventions, sweeps, tokenizer.")

    @Argument(help: "The fixture: a model directory with cases.json and its reference outputs (Plugins/README.md).")
    var fixture: String

    @Option(help: ArgumentHelp("A plugin library to load first, as loupe serve --plugin does (repeatable).", valueName: "PATH"))
    var plugin: [String] = []

    func run() throws {
        let architectures = BuiltInPlugins.architectureRegistry()
        let interventions = BuiltInPlugins.interventionRegistry()
        let loader = PluginLoader(architectures: architectures, interventions: interventions)
        for path in plugin {
            do { _ = try loader.load(library: path) } catch { throw ValidationError("\(path): \(error)") }
        }
        let loaded = try LoadedModel.load(fixture, registry: architectures)
        let report = ArchitectureConformance(model: loaded, fixture: fixture, interventions: interventions).report()
        print(report)
        if !report.failures.isEmpty { throw ExitCode(1) }
    }
}
