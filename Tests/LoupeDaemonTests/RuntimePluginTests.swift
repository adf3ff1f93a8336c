import Foundation
import LoupePlugin
import LoupeTestSupport
import LoupeWire
import XCTest

/// Plugin libraries loaded at run time (Plugins/README.md): the example plugin
/// (Plugins/Examples/ExampleMLP) built out of tree against the plugin API and loaded by
/// `loupe serve --plugin`, its model computing what the numpy reference computed
/// (scripts/make_example_plugin_fixture.py) through forward, trace and sweep; libraries built
/// against another API version or not loadable at all refused, the daemon serving on.
final class RuntimePluginTests: XCTestCase {
    /// The example's build, once per test run: its library, a library that claims another
    /// plugin API version, and a file that is no library.
    struct Libraries {
        let example: String
        let otherVersion: String
        let notALibrary: String
    }

    nonisolated(unsafe) static var libraries: Result<Libraries, any Error>?
    nonisolated(unsafe) static var daemon: DaemonProcess?

    static let package = Fixtures.repository + "/Plugins/Examples/ExampleMLP"
    /// Beside the main build, git-ignored, kept between runs so that a rebuild is quick.
    static let scratch = Fixtures.repository + "/.build-example"

    override class func setUp() {
        libraries = Result { try buildLibraries() }
        guard case .success(let built)? = libraries else { return }
        daemon = try? DaemonProcess(["--plugin", built.example, "--plugin", built.otherVersion, "--plugin", built.notALibrary])
    }

    override class func tearDown() {
        daemon?.stop()
        daemon = nil
    }

    private func built() throws -> Libraries { try XCTUnwrap(Self.libraries).get() }

    private func live() throws -> DaemonProcess {
        _ = try built()
        return try XCTUnwrap(Self.daemon, "loupe serve with the plugins did not start")
    }

    @discardableResult
    private func call(_ op: String, _ fields: [String: MessageValue] = [:]) throws -> MessageValue {
        try WireClient(endpoint: try live().endpoint, timeout: 60).call(op, fields).body
    }

    // MARK: What hello says

    func testHelloListsEveryArchitectureAndInterventionWithItsOrigin() throws {
        let example = try built().example
        let hello = try call("hello")
        XCTAssertEqual(hello["architectures"], MessageValue(testRegistry.names + ["example_mlp"]))
        let plugins = (hello["plugins"]?.arrayValue ?? []).map {
            [$0["kind"]?.stringValue ?? "?", $0["name"]?.stringValue ?? "?", $0["origin"]?.stringValue ?? "?"]
        }
        XCTAssertEqual(plugins, testRegistry.names.map { ["architecture", $0, "built-in"] }
            + testInterventions.names.map { ["intervention", $0, "built-in"] }
            + [["architecture", "example_mlp", example], ["intervention", "example_scale_mlp", example]])
        let interventions = (hello["interventions"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
        XCTAssertTrue(interventions.contains("example_scale_mlp"), "\(interventions)")
    }

    func testALibraryOfAnotherAPIVersionIsRefusedNamingBothVersions() throws {
        let (libraries, hello) = (try built(), try call("hello"))
        let failure = try XCTUnwrap(hello["plugin_failures"]?.arrayValue?.first { $0["origin"]?.stringValue == libraries.otherVersion },
                                    "\(hello["plugin_failures"] ?? .null)")
        XCTAssertEqual(failure["code"], "plugin_incompatible")
        let message = failure["message"]?.stringValue ?? ""
        let version = PluginLoader.apiVersion
        XCTAssertTrue(message.contains("version \(version + 1)") && message.contains("version \(version)"), message)
        let log = try live().log
        XCTAssertTrue(log.contains("plugin_incompatible"), log)
    }

    func testAFileThatIsNoLibraryLeavesTheDaemonServing() throws {
        let (libraries, hello) = (try built(), try call("hello"))
        let failure = try XCTUnwrap(hello["plugin_failures"]?.arrayValue?.first { $0["origin"]?.stringValue == libraries.notALibrary },
                                    "\(hello["plugin_failures"] ?? .null)")
        XCTAssertEqual(failure["code"], "plugin_load_failed")
        XCTAssertEqual(hello["plugin_failures"]?.arrayValue?.count, 2)
        // The built-in architectures run beside the plugin's.
        try call("models.load", ["name": "builtin-gpt2", "source": "gpt2-tiny"])
        let reply = try call("forward", ["model": "builtin-gpt2", "tokens": [[1, 2, 3]]])
        XCTAssertEqual(reply["top"]?.arrayValue?.count, 1)
    }

    /// A directory of plugins: the example's build directory, which also holds the plugin
    /// API's own library (skipped); a library also named with --plugin is loaded once.
    func testAPluginsDirectory() throws {
        let example = try built().example
        let directory = URL(fileURLWithPath: example).deletingLastPathComponent().path
        let daemon = try DaemonProcess(["--plugins-dir", directory, "--plugin", example])
        defer { daemon.stop() }
        let hello = try WireClient(endpoint: daemon.endpoint, timeout: 60).call("hello").body
        XCTAssertEqual(hello["architectures"], MessageValue(testRegistry.names + ["example_mlp"]))
        XCTAssertEqual(hello["plugin_failures"], [])
        let origins = (hello["plugins"]?.arrayValue ?? []).filter { $0["name"] == "example_mlp" }.map { $0["origin"] }
        XCTAssertEqual(origins, [.string(example)])
    }

    // MARK: The plugin's model

    /// What scripts/make_example_plugin_fixture.py computed in float64.
    struct Expected: Decodable {
        let clean, corrupted: [Int]
        let answer, wrong: Int
        let clean_logits, corrupted_logits, act_0, residual_sweep: [[Double]]
        let logit_diff: [String: Double]
    }

    private func expected() throws -> Expected {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.modelsDirectory + "/example-mlp-tiny/expected.json"))
        return try JSONDecoder().decode(Expected.self, from: data)
    }

    private func loadExample() throws {
        let reply = try call("models.load", ["name": "example", "source": "example-mlp-tiny"])
        XCTAssertEqual(reply["architecture"], "example_mlp")
    }

    private func assertClose(_ got: [Float], _ want: [[Double]], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let flat = want.flatMap { $0 }
        XCTAssertEqual(got.count, flat.count, what, file: file, line: line)
        let worst = zip(got, flat).map { abs(Double($0) - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(worst, 1e-4, "\(what): max |difference| \(worst)", file: file, line: line)
    }

    func testForwardMatchesTheReference() throws {
        try loadExample()
        let e = try expected()
        let reply = try call("forward", ["model": "example", "tokens": [MessageValue(e.clean), MessageValue(e.corrupted)],
                                         "positions": MessageValue(Array(0..<e.clean.count)), "logits": true,
                                         "save": ["model.layers.0.mlp.act_fn.output"]])
        let logits = try WireTensor(XCTUnwrap(reply["logits"]))
        XCTAssertEqual(logits.shape, [2, e.clean.count, 32])
        let values = try logits.floats(), half = values.count / 2
        assertClose(Array(values[..<half]), e.clean_logits, "clean logits")
        assertClose(Array(values[half...]), e.corrupted_logits, "corrupted logits")
        let activation = try WireTensor(XCTUnwrap(reply["saved"]?["model.layers.0.mlp.act_fn.output"])).floats()
        assertClose(Array(activation[..<(activation.count / 2)]), e.act_0, "layer 0's MLP activation")
    }

    /// The conformance suite every built-in architecture passes, run on the example's
    /// fixture with the library loaded as the daemon loads it (`loupe conformance --plugin`).
    func testTheExamplePassesTheConformanceSuite() throws {
        let fixture = Fixtures.modelsDirectory + "/example-mlp-tiny"
        let result = try LoupeProcess.run(["conformance", fixture, "--plugin", try built().example])
        XCTAssertEqual(result.status, 0, result.output + result.errors)
        for check in ["sites", "module-tree", "hf-parity", "padding", "hooks", "module-calls", "interventions", "sweeps"] {
            XCTAssertTrue(result.output.contains(check), "the report names \(check):\n\(result.output)")
        }
        // Without the plugin nothing runs this model type: the suite cannot load it.
        XCTAssertNotEqual(try LoupeProcess.run(["conformance", fixture]).status, 0)
    }

    /// A trace reads the plugin model's own modules, and the plugin's intervention (its
    /// factor 0) does what the built-in `ablate` of the MLP does.
    func testTraceWithThePluginsIntervention() throws {
        try loadExample()
        let e = try expected()
        let tokens = MessageValue(e.clean)
        let reply = try call("trace", ["model": "example", "invokes": [tokens, tokens, tokens], "nodes": [
            ["id": 0, "op": "get", "site": "model.layers.0.mlp.act_fn", "io": "output", "invoke": 0],
            ["id": 1, "op": "save", "x": ["ref": 0], "name": "act"],
            ["id": 2, "op": "intervene", "name": "example_scale_mlp", "invoke": 1, "params": ["layers": [1], "factor": 0.0]],
            ["id": 3, "op": "intervene", "name": "ablate", "invoke": 2, "params": ["component": "mlp", "layer": 1]],
            ["id": 4, "op": "get", "site": "logits", "invoke": 0], ["id": 5, "op": "save", "x": ["ref": 4], "name": "plain"],
            ["id": 6, "op": "get", "site": "logits", "invoke": 1], ["id": 7, "op": "save", "x": ["ref": 6], "name": "scaled"],
            ["id": 8, "op": "get", "site": "logits", "invoke": 2], ["id": 9, "op": "save", "x": ["ref": 8], "name": "ablated"],
        ]])
        func saved(_ name: String) throws -> [Float] { try WireTensor(XCTUnwrap(reply["saved"]?[name])).floats() }
        assertClose(try saved("act"), e.act_0, "layer 0's MLP activation")
        assertClose(try saved("plain"), e.clean_logits, "logits")
        let (scaled, ablated) = (try saved("scaled"), try saved("ablated"))
        assertClose(scaled, [ablated.map(Double.init)], "example_scale_mlp with factor 0 against ablate")
        XCTAssertGreaterThan(zip(scaled, try saved("plain")).map { abs($0 - $1) }.max() ?? 0, 1e-2, "the intervention changed nothing")
    }

    func testResidualSweepMatchesTheReference() throws {
        try loadExample()
        let e = try expected()
        let reply = try call("sweep", ["model": "example", "clean": MessageValue(e.clean), "corrupted": MessageValue(e.corrupted),
                                       "kind": "residual", "metric": ["logit_diff": ["answer": .int(Int64(e.answer)), "wrong": .int(Int64(e.wrong))]]])
        let values = (reply["values"]?.arrayValue ?? []).flatMap { ($0.arrayValue ?? []).map { Float($0.doubleValue ?? .nan) } }
        assertClose(values, e.residual_sweep, "normalized logit differences")
        XCTAssertEqual(reply["clean"]?.doubleValue ?? .nan, e.logit_diff["clean"]!, accuracy: 1e-4)
        XCTAssertEqual(reply["corrupted"]?.doubleValue ?? .nan, e.logit_diff["corrupted"]!, accuracy: 1e-4)
    }

    // MARK: Building the libraries

    /// Builds the example with `swift build` (its own package, depending on this one by
    /// path), a one-function library that claims another plugin API version, and a file
    /// that is not a library at all.
    static func buildLibraries() throws -> Libraries {
        try run("swift", ["build", "-c", "debug", "--package-path", package, "--scratch-path", scratch])
        let example = scratch + "/debug/libExampleMLP.so"
        guard FileManager.default.fileExists(atPath: example) else { throw DaemonProcess.Failure("the example's build made no \(example)") }

        let directory = NSTemporaryDirectory() + "loupe-plugins-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // The entry point of a plugin built against the next version: it returns that
        // version and registers nothing, as PluginRegistrar.entry does.
        let source = directory + "/other_version.swift"
        try """
        @_cdecl("loupe_plugin_register")
        public func loupePluginRegister(_ daemonVersion: Int, _ registrar: UnsafeMutableRawPointer?) -> Int { \(PluginLoader.apiVersion + 1) }
        """.write(toFile: source, atomically: true, encoding: .utf8)
        let otherVersion = directory + "/libOtherVersion.so"
        try run("swiftc", ["-emit-library", "-parse-as-library", "-module-name", "OtherVersion", source, "-o", otherVersion])
        let notALibrary = directory + "/libNotALibrary.so"
        try "not a shared library\n".write(toFile: notALibrary, atomically: true, encoding: .utf8)
        return Libraries(example: example, otherVersion: otherVersion, notALibrary: notALibrary)
    }

    /// Runs a tool found on PATH; throws with its output when it fails.
    private static func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw DaemonProcess.Failure("\(tool) \(arguments.joined(separator: " ")) failed (\(process.terminationStatus)):\n\(text)")
        }
    }
}
