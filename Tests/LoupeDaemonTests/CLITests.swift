import Foundation
import LoupeWire
import XCTest

/// The `loupe` command line as a user runs it: the built executable against a live daemon.
final class CLITests: XCTestCase {
    private func run(_ arguments: [String], environment: [String: String] = [:]) throws -> LoupeProcess.Result {
        try LoupeProcess.run(arguments, environment: environment)
    }

    func testNoDaemonIsSaidPlainly() throws {
        let result = try run(["ps", "--timeout", "0.3"], environment: ["LOUPE_ENDPOINT": "ipc:///tmp/loupe-nobody-here.sock"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.errors.contains("loupe serve"), result.errors)
        XCTAssertTrue(result.errors.contains("ipc:///tmp/loupe-nobody-here.sock"), result.errors)
    }

    func testCommandsAgainstALiveDaemon() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let endpoint = ["--endpoint", live.endpoint]

        let load = try run(["load", "tiny", Fixtures.gpt2Tiny] + endpoint)
        XCTAssertEqual(load.status, 0, load.errors)
        XCTAssertTrue(load.output.contains("loaded tiny (gpt2, 2 layers)"), load.output)

        let ps = try run(["ps"] + endpoint)
        XCTAssertTrue(ps.output.contains("tiny") && ps.output.contains("gpt2"), ps.output)

        let describe = try run(["describe", "tiny"] + endpoint)
        XCTAssertTrue(describe.output.hasPrefix("GPT2LMHeadModel(\n  (transformer): GPT2Model("), describe.output)

        // --json prints {tokens, top: [{id, token, logit}]}, here without a tokenizer.
        let json = try run(["run", "tiny", "1, 2, 3", "--ids", "--top", "2", "--json"] + endpoint, environment: ["LOUPE_ENDPOINT": "unused"])
        XCTAssertEqual(json.status, 0, json.errors)
        let parsed = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        XCTAssertEqual(parsed?["tokens"] as? [Int], [1, 2, 3])
        let top = parsed?["top"] as? [[String: Any]]
        XCTAssertEqual(top?.count, 2)
        XCTAssertNotNil(top?.first?["logit"] as? Double)
        XCTAssertNotNil(top?.first?["id"] as? Int)

        // The daemon's error, verbatim, and a non-zero exit.
        let failure = try run(["tokenize", "tiny", "hello"] + endpoint)
        XCTAssertNotEqual(failure.status, 0)
        XCTAssertTrue(failure.errors.contains("has no tokenizer"), failure.errors)
        let missing = try run(["describe", "nope"] + endpoint)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.errors.contains("no model named 'nope'"), missing.errors)

        // LOUPE_ENDPOINT is the default endpoint.
        let unload = try run(["unload", "tiny"], environment: ["LOUPE_ENDPOINT": live.endpoint])
        XCTAssertEqual(unload.status, 0, unload.errors)
        XCTAssertTrue(try run(["ps"] + endpoint).output.contains("no models loaded"))

        let stop = try run(["stop"] + endpoint)
        XCTAssertEqual(stop.status, 0, stop.errors)
        live.daemon.wait()
    }
}
