import Foundation
#if canImport(Glibc)
import Glibc
#endif
import LoupeModels
import LoupeTrace

/// One architecture or intervention the daemon knows, and where it came from: `hello`'s
/// `plugins`.
public struct PluginEntry: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case architecture
        case intervention
    }

    public let kind: Kind
    public let name: String
    /// `PluginEntry.builtIn`, or the absolute path of the library that registered it.
    public let origin: String

    /// The origin of what the `loupe` executable itself registers.
    public static let builtIn = "built-in"

    public init(_ kind: Kind, _ name: String, origin: String) {
        self.kind = kind
        self.name = name
        self.origin = origin
    }
}

/// Why a plugin library was refused. The daemon logs it, lists it in `hello`'s
/// `plugin_failures` and goes on serving what it has.
public struct PluginError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Built against another version of the plugin API than the daemon's.
        case incompatible = "plugin_incompatible"
        /// Not there, not a loadable library, not a Loupe plugin, or registering a name the
        /// daemon already has.
        case loadFailed = "plugin_load_failed"
    }

    public let code: Code
    /// The library, as an absolute path.
    public let library: String
    /// A sentence a person can act on.
    public let message: String

    public init(_ code: Code, library: String, _ message: String) {
        self.code = code
        self.library = library
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// Everything the daemon runs, with its origin, and the libraries it refused: what `hello`
/// reports.
public struct PluginCatalog: Sendable {
    public internal(set) var entries: [PluginEntry]
    public internal(set) var failures: [PluginError] = []

    /// Everything already in the registries, as built in.
    public init(architectures: ArchitectureRegistry, interventions: InterventionRegistry) {
        entries = architectures.names.map { PluginEntry(.architecture, $0, origin: PluginEntry.builtIn) }
            + interventions.names.map { PluginEntry(.intervention, $0, origin: PluginEntry.builtIn) }
    }
}

/// Loads plugin libraries into a process's registries (`loupe serve --plugin`,
/// `--plugins-dir`): each through its one C entry point, checked for the plugin API version
/// it was built against, its registrations checked against what the registries hold before
/// any reaches them.
///
/// On Linux the plugin binds to the daemon's own copy of the plugin API, because the `loupe`
/// executable exports its symbols (`--export-dynamic`): the `libLoupePluginAPI.so` that the
/// plugin names as a dependency is mapped but never used, so there is one copy of every
/// type's metadata and every registry. Libraries stay loaded for the life of the process.
public final class PluginLoader {
    public let architectures: ArchitectureRegistry
    public let interventions: InterventionRegistry
    public private(set) var catalog: PluginCatalog
    /// Real paths of the libraries loaded, so that one named twice is loaded once.
    private var loaded: Set<String> = []

    /// The plugin API's own library, which a plugin's build directory holds beside the plugin.
    public static let apiLibrary = "libLoupePluginAPI"

    #if os(macOS)
    public static let libraryExtension = "dylib"
    #else
    public static let libraryExtension = "so"
    #endif

    /// `architectures` and `interventions` hold the built-in ones, which the catalog lists
    /// as built in.
    public init(architectures: ArchitectureRegistry, interventions: InterventionRegistry) {
        self.architectures = architectures
        self.interventions = interventions
        catalog = PluginCatalog(architectures: architectures, interventions: interventions)
    }

    /// The plugin API version this daemon was built with.
    public static var apiVersion: Int { PluginAPI.daemonVersion }

    /// Loads one library and registers what it brings; on failure registers nothing,
    /// records the failure in the catalog and throws it. Returns what it added.
    @discardableResult
    public func load(library path: String) throws(PluginError) -> [PluginEntry] {
        let library = URL(fileURLWithPath: path).standardizedFileURL.path
        do {
            return try register(library)
        } catch {
            catalog.failures.append(error)
            throw error
        }
    }

    /// Loads every library in `directory` (`*.so` on Linux, `*.dylib` on macOS), by name,
    /// except the plugin API's own; each failure is recorded. Returns the failures (a
    /// directory that cannot be read is one).
    @discardableResult
    public func load(directory: String) -> [PluginError] {
        let path = URL(fileURLWithPath: directory).standardizedFileURL.path
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            let failure = PluginError(.loadFailed, library: path, "cannot read the plugins directory \(path): \(error.localizedDescription)")
            catalog.failures.append(failure)
            return [failure]
        }
        var failures: [PluginError] = []
        for name in names.sorted() where name.hasSuffix("." + Self.libraryExtension) && !name.hasPrefix(Self.apiLibrary + ".") {
            do { try load(library: path + "/" + name) } catch { failures.append(error) }
        }
        return failures
    }

    private func register(_ library: String) throws(PluginError) -> [PluginEntry] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: library, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw PluginError(.loadFailed, library: library, "\(library): no such file")
        }
        let realPath = URL(fileURLWithPath: library).resolvingSymlinksInPath().path
        if loaded.contains(realPath) { return [] }

        // Every symbol bound now, so a library built against another API fails here rather
        // than at a later call; local, so two plugins cannot bind to each other.
        guard let handle = dlopen(library, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown error"
            if reason.contains("undefined symbol: $s") {
                // A Swift symbol the daemon does not have: built against another plugin API.
                throw PluginError(.incompatible, library: library,
                                  "\(library) was built against another plugin API than this daemon's (version \(Self.apiVersion)): \(reason); rebuild it against this Loupe")
            }
            throw PluginError(.loadFailed, library: library, "\(library) is not a loadable library: \(reason)")
        }
        // The library stays loaded even when refused: Swift code cannot be unloaded safely.
        guard let symbol = dlsym(handle, PluginAPI.entryPoint) else {
            throw PluginError(.loadFailed, library: library,
                              "\(library) is not a Loupe plugin: it has no entry point \(PluginAPI.entryPoint)")
        }
        typealias Entry = @convention(c) (Int, UnsafeMutableRawPointer?) -> Int
        let entry = unsafeBitCast(symbol, to: Entry.self)
        let registrar = PluginRegistrar()
        let pluginVersion = withExtendedLifetime(registrar) {
            entry(Self.apiVersion, Unmanaged.passUnretained(registrar).toOpaque())
        }
        guard pluginVersion == Self.apiVersion else {
            throw PluginError(.incompatible, library: library,
                              "\(library) was built against plugin API version \(pluginVersion); this daemon has version \(Self.apiVersion): rebuild it against this Loupe")
        }
        try checkBinding(registrar, library)
        try check(registrar, library)

        var added: [PluginEntry] = []
        for architecture in registrar.architectures {
            architectures.register(architecture)
            added.append(PluginEntry(.architecture, architecture.name, origin: library))
        }
        for intervention in registrar.interventions {
            interventions.register(intervention)
            added.append(PluginEntry(.intervention, intervention.name, origin: library))
        }
        catalog.entries += added
        loaded.insert(realPath)
        return added
    }

    /// Refuses a library whose types conform to another copy of the plugin API than the
    /// daemon's: its own `libLoupePluginAPI`, when the executable does not export its symbols
    /// (linked without `--export-dynamic`). Much would seem to work, sharing the layouts, but
    /// the daemon's casts and typed errors would not see the plugin's.
    private func checkBinding(_ registrar: PluginRegistrar, _ library: String) throws(PluginError) {
        var foreign: [String] = []
        for architecture in registrar.architectures where !Self.isArchitecture(architecture) { foreign.append(architecture.name) }
        for intervention in registrar.interventions where !Self.isIntervention(intervention) { foreign.append(intervention.name) }
        guard foreign.isEmpty else {
            throw PluginError(.loadFailed, library: library,
                              "\(library) registers \(foreign.joined(separator: ", ")) against its own copy of the plugin API, not the daemon's: the loupe executable must be linked with --export-dynamic (Package.swift)")
        }
    }

    /// Whether `type` conforms to the daemon's protocol (a cast through its own descriptor).
    @inline(never) @_optimize(none)
    private static func isArchitecture(_ type: Any.Type) -> Bool { type is any ArchitectureAdapter.Type }
    @inline(never) @_optimize(none)
    private static func isIntervention(_ type: Any.Type) -> Bool { type is any Intervention.Type }

    /// Refuses a library that registers nothing, or a name or model type already taken
    /// (by the daemon or by itself): the first registration would win silently otherwise.
    private func check(_ registrar: PluginRegistrar, _ library: String) throws(PluginError) {
        guard !registrar.architectures.isEmpty || !registrar.interventions.isEmpty else {
            throw PluginError(.loadFailed, library: library, "\(library) registered no architecture and no intervention")
        }
        func origin(_ kind: PluginEntry.Kind, _ name: String) -> String {
            let origin = catalog.entries.first { $0.kind == kind && $0.name == name }?.origin ?? PluginEntry.builtIn
            return origin == PluginEntry.builtIn ? "built in" : "from \(origin)"
        }
        var names = Set(architectures.names), types: [String: String] = [:]
        for architecture in registrar.architectures {
            guard names.insert(architecture.name).inserted else {
                throw PluginError(.loadFailed, library: library,
                                  "\(library) registers architecture \"\(architecture.name)\", which the daemon already has (\(origin(.architecture, architecture.name)))")
            }
            for type in architecture.modelTypes {
                if let taken = try? architectures.adapter(forModelType: type) {
                    throw PluginError(.loadFailed, library: library,
                                      "\(library) registers model type \"\(type)\", which architecture \"\(taken.name)\" already runs (\(origin(.architecture, taken.name)))")
                }
                if let other = types.updateValue(architecture.name, forKey: type) {
                    throw PluginError(.loadFailed, library: library,
                                      "\(library) registers model type \"\(type)\" twice (architectures \"\(other)\" and \"\(architecture.name)\")")
                }
            }
        }
        var interventionNames = Set(interventions.names)
        for intervention in registrar.interventions {
            guard interventionNames.insert(intervention.name).inserted else {
                throw PluginError(.loadFailed, library: library,
                                  "\(library) registers intervention \"\(intervention.name)\", which the daemon already has (\(origin(.intervention, intervention.name)))")
            }
        }
    }
}
