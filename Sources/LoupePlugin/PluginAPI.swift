import LoupeModels
import LoupeTrace

/// The plugin API: the modules of the `LoupePluginAPI` library product (LoupeTensor,
/// LoupeFormats, LoupeTokenizers, LoupeModels, LoupeTrace and this one), which a plugin built
/// out of tree imports and the daemon shares with it at run time (Plugins/README.md).
public enum PluginAPI {
    /// The version of the plugin API, as compiled where it is read: in a plugin, the version
    /// it was built against; in the daemon, its own. It is `PluginRegistrar.entry`'s default
    /// `apiVersion`, the one place the number is written.
    @_alwaysEmitIntoClient
    public static var version: Int { PluginRegistrar.entry(0, nil) { _ in } }

    /// The C name of a plugin library's one entry point, whose C signature is
    /// `intptr_t loupe_plugin_register(intptr_t daemon_version, void *registrar)`: given the
    /// daemon's plugin API version, it registers what the library brings through `registrar`
    /// only when that is the version it was built against, and returns that version either
    /// way. `PluginRegistrar.entry` implements it.
    public static let entryPoint = "loupe_plugin_register"

    /// The daemon's version, as this module was compiled.
    static let daemonVersion = version
}

/// What a plugin library's entry point registers its architectures and interventions with.
///
/// A plugin's whole entry point:
///
///     @_cdecl("loupe_plugin_register")
///     public func loupePluginRegister(_ daemonVersion: Int, _ registrar: UnsafeMutableRawPointer?) -> Int {
///         PluginRegistrar.entry(daemonVersion, registrar) { plugin in
///             plugin.register(MyArchitecture.self)
///             plugin.register(MyIntervention.self)
///         }
///     }
///
/// Nothing registered reaches the daemon until the entry point has returned and the
/// daemon has checked the version and every name: a library is taken whole or not at all.
public final class PluginRegistrar {
    private(set) var architectures: [any ArchitectureAdapter.Type] = []
    private(set) var interventions: [any Intervention.Type] = []

    init() {}

    /// Adds an architecture: models whose HF `model_type` (or GGUF `general.architecture`)
    /// is one of its `modelTypes` load through it.
    public func register(_ architecture: any ArchitectureAdapter.Type) {
        architectures.append(architecture)
    }

    /// Adds an intervention that traces (`intervene` nodes) may name.
    public func register(_ intervention: any Intervention.Type) {
        interventions.append(intervention)
    }

    /// The body of a plugin's `loupe_plugin_register`: runs `body` with the daemon's
    /// registrar when `daemonVersion` is the plugin API version this plugin is built against
    /// (`apiVersion`; leave it out), and returns that version either way. Compiled into the
    /// plugin, so the check runs before the plugin touches anything of the daemon's.
    ///
    /// `apiVersion`'s default is the plugin API version. It goes up by one with every change
    /// to the public API of the plugin API's modules that would break a plugin built before
    /// it (a type's layout, a function, a protocol requirement). It is written here, as a
    /// default argument, because a default argument of a function emitted into its client
    /// is both compiled into the plugin and part of the function's interface, so a change
    /// to it rebuilds every plugin's entry point.
    @_alwaysEmitIntoClient
    public static func entry(_ daemonVersion: Int, _ registrar: UnsafeMutableRawPointer?, apiVersion: Int = 2,
                             _ body: (PluginRegistrar) -> Void) -> Int {
        if daemonVersion == apiVersion, let registrar {
            body(Unmanaged<PluginRegistrar>.fromOpaque(registrar).takeUnretainedValue())
        }
        return apiVersion
    }
}
