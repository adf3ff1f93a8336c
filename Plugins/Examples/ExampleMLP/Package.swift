// swift-tools-version:6.0
import PackageDescription

// A plugin library that `loupe serve --plugin` loads at run time: an architecture (Llama with
// a plain GELU MLP) and an intervention, built out of tree against Loupe's plugin API, the
// dynamic library product LoupePluginAPI. Plugins/README.md, "Adding an architecture".
let package = Package(
    name: "ExampleMLP",
    products: [.library(name: "ExampleMLP", type: .dynamic, targets: ["ExampleMLP"])],
    dependencies: [.package(name: "Loupe", path: "../../..")],
    targets: [.target(name: "ExampleMLP", dependencies: [.product(name: "LoupePluginAPI", package: "Loupe")])],
    swiftLanguageModes: [.v6]
)
