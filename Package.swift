// swift-tools-version:6.0
import PackageDescription

// Loupe: an interpretability workbench daemon. See README.md and Protocol/PROTOCOL.md.

// The kernels are written with SIMD types; on x86-64 let them use AVX2 and FMA (every
// x86-64 server since 2013) instead of the SSE2 baseline, where a fused multiply-add is a
// libm call per lane.
#if arch(x86_64)
let kernelFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let kernelFlags: [SwiftSetting] = []
#endif
/// The architecture plugins built into Loupe (Plugins/README.md, "Built in").
let builtInArchitectures = ["Gemma", "GPT2", "GPTNeoX", "Llama"]

let package = Package(
    name: "Loupe",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "loupe", targets: ["loupe"]),
        .library(name: "LoupeModels", targets: ["LoupeModels"]),
        // The plugin API: what an architecture or intervention built out of tree imports, one
        // dynamic library whose symbols the plugin binds to the daemon's own copies of at run
        // time (Plugins/README.md, "At run time").
        .library(name: "LoupePluginAPI", type: .dynamic,
                 targets: ["LoupeTensor", "LoupeFormats", "LoupeTokenizers", "LoupeModels", "LoupeTrace", "LoupePlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // System libraries: one-line shim headers, linked by name.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .systemLibrary(name: "CZMQ", path: "Sources/CZMQ"),
        .systemLibrary(name: "CMsgPack", path: "Sources/CMsgPack"),
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),

        // The engine.
        .target(name: "LoupeTensor", dependencies: ["CBLAS"], swiftSettings: kernelFlags),
        .target(name: "LoupeFormats", dependencies: ["LoupeTensor"]),
        .target(name: "LoupeTokenizers", dependencies: ["LoupeFormats"]),
        .target(name: "LoupeModels", dependencies: ["LoupeTensor", "LoupeFormats", "LoupeTokenizers", "CMalloc"]),


        // Traces: the IR, its validation and executor, the intervention-plugin protocol.
        .target(name: "LoupeTrace", dependencies: ["LoupeModels", "LoupeTensor"], exclude: ["TRACE.md"]),
        // Intervention plugins: each registers itself through one call.
        .target(name: "Interventions", dependencies: ["LoupeTrace", "LoupeModels", "LoupeTensor"], path: "Plugins/Interventions"),

        // Plugin libraries loaded at run time: the entry point's registrar, the loader.
        .target(name: "LoupePlugin", dependencies: ["LoupeModels", "LoupeTrace"]),

        // Every built-in plugin, listed once (Plugins/BuiltIns); the core targets above name none.
        .target(name: "BuiltInPlugins", dependencies: builtInArchitectures.map { .target(name: $0) } + ["Interventions", "LoupeModels", "LoupeTrace"],
                path: "Plugins/BuiltIns"),

        // Patching and ablation sweeps: each cell an intervention looked up by name, computed with exact reuse.
        .target(name: "LoupeSweeps", dependencies: ["LoupeModels", "LoupeTrace"]),

        // The conformance suite every architecture adapter passes, run on a fixture.
        .target(name: "LoupeConformance", dependencies: ["LoupeModels", "LoupeSweeps", "LoupeTrace", "LoupeTensor", "LoupeFormats", "LoupeTokenizers"]),

        // The wire protocol and the daemon.
        .target(name: "LoupeWire", dependencies: ["CZMQ", "CMsgPack", "LoupeTensor"]),
        .target(
            name: "LoupeDaemon",
            dependencies: ["LoupeWire", "LoupeModels", "LoupeSweeps", "LoupeTrace", "LoupePlugin", .product(name: "Logging", package: "swift-log")]),

        .executableTarget(
            name: "loupe",
            dependencies: [
                "LoupeModels", "BuiltInPlugins", "LoupeTrace", "LoupeWire", "LoupeDaemon", "LoupePlugin", "LoupeConformance",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // Plugin libraries (loupe serve --plugin) bind to the executable's own copy of the
            // plugin API: one copy of each type's metadata and of each registry.
            linkerSettings: [.unsafeFlags(["-Xlinker", "--export-dynamic"], .when(platforms: [.linux]))]),

        .executableTarget(
            name: "loupe-bench",
            dependencies: ["LoupeModels", "LoupeFormats", "LoupeSweeps", "LoupeTrace", "BuiltInPlugins", .product(name: "ArgumentParser", package: "swift-argument-parser")]),

        // The fuzz target over the daemon's request path (scripts/fuzz.sh builds it with libFuzzer).
        .executableTarget(
            name: "loupe-fuzz",
            dependencies: ["LoupeDaemon", "LoupeWire", "LoupeModels", "LoupeFormats", "LoupeTokenizers", "LoupeTrace", "BuiltInPlugins"]),

        // Fixture paths, the plugin registry and comparisons every test target shares.
        .target(name: "LoupeTestSupport", dependencies: ["LoupeModels", "LoupeTrace", "BuiltInPlugins"], path: "Tests/LoupeTestSupport"),
        .testTarget(name: "LoupeTensorTests", dependencies: ["LoupeTensor", "LoupeTestSupport"]),
        .testTarget(name: "LoupeFormatsTests", dependencies: ["LoupeTestSupport", "LoupeFormats"]),
        .testTarget(name: "LoupeTokenizersTests", dependencies: ["LoupeTokenizers", "LoupeFormats", "LoupeModels"]),
        .testTarget(name: "LoupeModelsTests", dependencies: ["LoupeTestSupport", "LoupeModels"]),
        .testTarget(name: "LoupeSweepsTests", dependencies: ["LoupeTestSupport", "LoupeSweeps", "LoupeModels", "LoupeTrace"]),
        .testTarget(name: "LoupeTraceTests", dependencies: ["LoupeTestSupport", "LoupeTrace", "Interventions", "LoupeModels", "LoupeTensor", "LoupeSweeps"]),
        .testTarget(name: "LoupeConformanceTests", dependencies: ["LoupeConformance", "LoupeTestSupport", "LoupeModels", "LoupeTrace", "LoupeTensor"]),
        .testTarget(name: "LoupeWireTests", dependencies: ["LoupeTestSupport", "LoupeWire", "LoupeTensor"]),
        .testTarget(
            name: "LoupeDaemonTests",
            dependencies: ["LoupeTestSupport", "LoupeDaemon", "LoupeWire", "LoupeModels", "LoupeSweeps", "LoupeTrace", "LoupePlugin", "CZMQ", .product(name: "Logging", package: "swift-log")]),
    ],
    swiftLanguageModes: [.v6]
)

// Architecture plugins built in: each the folder Plugins/NAME, a target depending on the core
// alone, registered in Plugins/BuiltIns/BuiltIns.swift.
package.targets += builtInArchitectures.map { .target(name: $0, dependencies: ["LoupeModels"], path: "Plugins/\($0)") }
