import Logging
import LoupeModels
import LoupePlugin
import LoupeTrace

/// `loupe serve --plugin` and `--plugins-dir` (Plugins/README.md).
extension Serve {
    /// The libraries of --plugin and --plugins-dir, in that order. A library refused is
    /// logged and listed by `hello`; the daemon starts all the same, with what it has.
    func loadPlugins(into registry: ArchitectureRegistry, _ interventions: InterventionRegistry) -> PluginCatalog {
        let logger = Logger(label: "loupe.plugins")
        let loader = PluginLoader(architectures: registry, interventions: interventions)
        func loaded(_ entries: [PluginEntry]) {
            for entry in entries {
                logger.info("plugin loaded", metadata: ["kind": "\(entry.kind.rawValue)", "name": "\(entry.name)", "origin": "\(entry.origin)"])
            }
        }
        for path in plugin {
            do { loaded(try loader.load(library: path)) } catch {
                logger.error("plugin refused", metadata: ["code": "\(error.code.rawValue)", "library": "\(error.library)", "message": "\(error.message)"])
            }
        }
        for directory in pluginsDir {
            let before = loader.catalog.entries.count
            for error in loader.load(directory: directory) {
                logger.error("plugin refused", metadata: ["code": "\(error.code.rawValue)", "library": "\(error.library)", "message": "\(error.message)"])
            }
            loaded(Array(loader.catalog.entries[before...]))
        }
        return loader.catalog
    }
}
