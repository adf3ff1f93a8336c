import LoupeModels
import LoupePlugin
import LoupeTensor
import LoupeTrace

/// The library's one entry point: the daemon calls it once, at start, with the plugin API
/// version it was built with; what it registers reaches the daemon only when that is the
/// version this library was built against.
@_cdecl("loupe_plugin_register")
public func loupePluginRegister(_ daemonVersion: Int, _ registrar: UnsafeMutableRawPointer?) -> Int {
    PluginRegistrar.entry(daemonVersion, registrar) { plugin in
        plugin.register(ExampleMLPArchitecture.self)
        plugin.register(ScaleMLP.self)
    }
}

/// Multiplies the MLP's output of chosen layers by a factor (0 removes it): an intervention
/// any architecture with the canonical `blocks.L.mlp_out` site can run.
public enum ScaleMLP: Intervention {
    public static let name = "example_scale_mlp"
    public static let summary = "multiply the MLP output of chosen layers by a factor"
    public static let parameters: [InterventionParameter] = [
        InterventionParameter("layers", .ints, required: true, "layer or layers"),
        InterventionParameter("factor", .double, required: true, "the factor"),
    ]

    public static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let (target, factor) = (context.target, Float(arguments.double("factor")!))
        var layers: [Int] = []
        for layer in arguments.ints("layers")! { layers.append(try context.layer(layer, "layers")) }
        return layers.map { layer in
            InterventionStep(site: Site("blocks.\(layer).mlp_out", .output)) { values in
                let value = values.value(target)
                value.assign(from: TensorMath.map(value) { $0 * factor })
            }
        }
    }
}
