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

        // A sweep from the command line: token ids for a model without a tokenizer.
        let ids = ["--ids", "--clean", "226,166,280,485,436,17,429", "--corrupt", "226,166,280,7,436,17,429", "--answer", "1", "--wrong", "2"]
        let patch = try run(["patch", "tiny", "--json"] + ids + endpoint)
        XCTAssertEqual(patch.status, 0, patch.errors)
        let sweep = try JSONSerialization.jsonObject(with: Data(patch.output.utf8)) as? [String: Any]
        XCTAssertEqual(Set(sweep?.keys.map { $0 } ?? []), ["clean_logit_diff", "corrupted_logit_diff", "rows", "cols", "values", "seconds"])
        XCTAssertEqual(sweep?["rows"] as? [String], ["0", "1"])
        XCTAssertEqual(sweep?["cols"] as? [String], ["226_0", "166_1", "280_2", "485_3", "436_4", "17_5", "429_6"])
        XCTAssertEqual((sweep?["values"] as? [[Double]])?.map(\.count), [7, 7])
        let directory = NSTemporaryDirectory() + "loupe-cli-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let drawn = try run(["heads", "tiny", "--svg", directory + "/h.svg", "--html", directory + "/h.html", "--title", "Heads & <tiny>"] + ids + endpoint)
        XCTAssertEqual(drawn.status, 0, drawn.errors)
        XCTAssertTrue(drawn.output.contains("Head") && drawn.output.contains("wrote \(directory)/h.svg"), drawn.output)
        let svg = try SVGText(path: directory + "/h.svg")
        XCTAssertEqual(svg.cells, 2 * 4)
        for label in ["Heads & <tiny>", "Head 0", "Head 3", "0", "1", "Layer", "Head", "Norm. Logit Diff"] {
            XCTAssertTrue(svg.texts.contains(label), "\(label) missing from \(svg.texts)")
        }
        // Attribution patching, labelled as an approximation; refused where it does not apply.
        let estimated = try run(["patch", "tiny", "--json", "--method", "attribution", "--site", "neurons", "--neuron-positions", "sum"] + ids + endpoint)
        XCTAssertEqual(estimated.status, 0, estimated.errors)
        let attribution = try JSONSerialization.jsonObject(with: Data(estimated.output.utf8)) as? [String: Any]
        XCTAssertEqual(attribution?["method"] as? String, "attribution")
        XCTAssertEqual(attribution?["approximation"] as? Bool, true)
        XCTAssertEqual((attribution?["values"] as? [[Double]])?.map(\.count), [256, 256])
        for (arguments, message) in [(["--compare"], "--compare is for --method attribution"), (["--method", "gradient"], "--method is activation or attribution"),
                                     (["--method", "attribution", "--ablate", "zero"], "exact only"), (["--neuron-positions", "sum"], "--site neurons")] {
            let refused = try run(["patch", "tiny"] + arguments + ids + endpoint)
            XCTAssertNotEqual(refused.status, 0, "\(arguments)")
            XCTAssertTrue(refused.errors.contains(message), refused.errors)
        }
        let badAnswer = try run(["patch", "tiny", "--ids", "--clean", "1,2", "--corrupt", "1,3", "--answer", "1", "--wrong", "900"] + endpoint)
        XCTAssertNotEqual(badAnswer.status, 0)
        XCTAssertTrue(badAnswer.errors.contains("outside the vocabulary"), badAnswer.errors)

        // LOUPE_ENDPOINT is the default endpoint.
        let unload = try run(["unload", "tiny"], environment: ["LOUPE_ENDPOINT": live.endpoint])
        XCTAssertEqual(unload.status, 0, unload.errors)
        XCTAssertTrue(try run(["ps"] + endpoint).output.contains("no models loaded"))

        let stop = try run(["stop"] + endpoint)
        XCTAssertEqual(stop.status, 0, stop.errors)
        live.daemon.wait()
    }
}
