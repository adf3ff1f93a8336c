import Foundation
import LoupeFormats
import XCTest

final class HFConfigTests: XCTestCase {
    func testValuesAndRequiredKeys() throws {
        let config = try HFConfig(json: """
            {"model_type": "gpt2", "n_layer": 12, "layer_norm_epsilon": 1e-05, "scale_attn_weights": true,
             "bos_token_id": null, "half": 1.5, "architectures": ["GPT2LMHeadModel"]}
            """, path: "config.json")
        XCTAssertEqual(config.path, "config.json")
        XCTAssertEqual(config.string("model_type"), "gpt2")
        XCTAssertEqual(try config.int("n_layer"), 12)
        XCTAssertEqual(try config.double("n_layer"), 12)
        XCTAssertEqual(try config.double("layer_norm_epsilon"), 1e-5)
        XCTAssertEqual(try config.bool("scale_attn_weights"), true)
        XCTAssertNil(try config.int("bos_token_id"))
        XCTAssertNil(try config.int("absent"))
        // A value of the wrong kind is an error naming the key, not a silent default.
        XCTAssertThrowsError(try config.int("half")) { XCTAssertEqual(($0 as? FormatError)?.item, "half") }
        XCTAssertThrowsError(try config.bool("n_layer")) { XCTAssertEqual(($0 as? FormatError)?.kind, .badValue) }
        XCTAssertEqual(config.values["architectures"], .array([.string("GPT2LMHeadModel")]))
        XCTAssertEqual(try config.requireInt("n_layer"), 12)
        XCTAssertEqual(try config.requireDouble("layer_norm_epsilon"), 1e-5)
        assertFormatError(.missingKey, file: "config.json", item: "n_head", try config.requireInt("n_head"))
        assertFormatError(.missingKey, file: "config.json", item: "bos_token_id", try config.requireInt("bos_token_id"))
        assertFormatError(.badValue, file: "config.json", item: "half", try config.requireInt("half"))
        assertFormatError(.badValue, file: "config.json", item: "model_type", try config.requireDouble("model_type"))
    }

    func testReadsFiles() throws {
        let directory = try makeTemporaryDirectory(self)
        let path = directory + "/config.json"
        try #"{"hidden_size": 576, "rms_norm_eps": 1e-05}"#.write(toFile: path, atomically: true, encoding: .utf8)
        let config = try HFConfig(path: path)
        XCTAssertEqual(config.path, path)
        XCTAssertEqual(try config.requireInt("hidden_size"), 576)
        assertFormatError(.missingKey, file: path, item: "num_hidden_layers", try config.requireInt("num_hidden_layers"))

        let missing = directory + "/absent.json"
        assertFormatError(.io, file: missing, item: nil, try HFConfig(path: missing))
    }

    func testNotJSON() throws {
        let path = try makeTemporaryDirectory(self) + "/config.json"
        try "{\"hidden_size\": 576,\n \"n_layer\": }".write(toFile: path, atomically: true, encoding: .utf8)
        assertFormatError(.badValue, file: path, item: nil, try HFConfig(path: path), message: "line 2")
        assertFormatError(.badValue, file: "c.json", item: nil, try HFConfig(json: "[1, 2]", path: "c.json"), message: "object")
        assertFormatError(.badValue, file: "c.json", item: nil, try HFConfig(json: "", path: "c.json"))
        assertFormatError(.badValue, file: "c.json", item: nil, try HFConfig(json: "{} {}", path: "c.json"))
    }

    func testRopeThetaForms() throws {
        // transformers 4
        XCTAssertEqual(try HFConfig(json: #"{"rope_theta": 100000.0}"#, path: "c").ropeTheta, 100000)
        // transformers 5
        XCTAssertEqual(try HFConfig(json: #"{"rope_parameters": {"rope_type": "default", "rope_theta": 500000}}"#, path: "c").ropeTheta, 500000)
        // transformers 5, one entry per layer type
        let perLayer = #"{"rope_parameters": {"sliding_attention": {"rope_theta": 10000}, "full_attention": {"rope_theta": 1000000}}}"#
        XCTAssertEqual(try HFConfig(json: perLayer, path: "c").ropeTheta, 1_000_000)
        let noFull = #"{"rope_parameters": {"sliding_attention": {"rope_theta": 10000}}}"#
        XCTAssertEqual(try HFConfig(json: noFull, path: "c").ropeTheta, 10000)
        // neither (GPT-2)
        XCTAssertNil(try HFConfig(json: #"{"n_positions": 1024}"#, path: "c").ropeTheta)
    }
}

final class JSONValueTests: XCTestCase {
    func testParsesEverything() throws {
        let value = try JSONValue.parse(#"""
            {"s": "a\"b\\c\/\n\t\u00e9\ud83d\ude00 ✓", "n": [-1.5e3, 0, 12345678901234, NaN, -Infinity],
             "b": [true, false], "z": null, "o": {"nested": {"deep": []}}}
            """#, file: "x.json")
        XCTAssertEqual(value["s"], .string("a\"b\\c/\n\té😀 ✓"))
        let numbers = try XCTUnwrap(value["n"]?.arrayValue)
        XCTAssertEqual(numbers[0], .number(-1500))
        XCTAssertEqual(numbers[2].intValue, 12_345_678_901_234)
        XCTAssertTrue(numbers[3].doubleValue?.isNaN ?? false)
        XCTAssertEqual(numbers[4], .number(-.infinity))
        XCTAssertEqual(value["b"], .array([.bool(true), .bool(false)]))
        XCTAssertEqual(value["z"], .null)
        XCTAssertEqual(value["o"]?["nested"]?["deep"], .array([]))
        XCTAssertNil(value["missing"])
    }

    func testRejectsBadInputWithoutCrashing() {
        for text in ["", "{", "[1,]", "{\"a\" 1}", "\"\\x\"", "\"\\u12\"", "tru", "01.", "1e", "[" + String(repeating: "[", count: 100_000)] {
            XCTAssertThrowsError(try JSONValue.parse(text, file: "bad.json"), String(text.prefix(20))) { error in
                XCTAssertEqual((error as? FormatError)?.kind, .badValue)
                XCTAssertEqual((error as? FormatError)?.file, "bad.json")
            }
        }
    }
}

final class HFCacheTests: XCTestCase {
    /// HF_HOME/hub/models--org--tiny/{refs/main, snapshots/<rev>}, each snapshot newer than the last.
    func makeCache(revisions: [String], main: String?) throws -> (home: String, snapshots: String) {
        let home = try makeTemporaryDirectory(self)
        let repo = home + "/hub/models--org--tiny"
        let fm = FileManager.default
        for (i, revision) in revisions.enumerated() {
            let path = repo + "/snapshots/" + revision
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
            try fm.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_700_000_000 + Double(i) * 1000)], ofItemAtPath: path)
        }
        if let main {
            try fm.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
            try (main + "\n").write(toFile: repo + "/refs/main", atomically: true, encoding: .utf8)
        }
        return (home, repo + "/snapshots")
    }

    func testPrefersRefsMain() throws {
        let (home, snapshots) = try makeCache(revisions: ["aaa111", "bbb222"], main: "aaa111")
        XCTAssertEqual(try HFCache.snapshotDirectory(forModelID: "org/tiny", environment: ["HF_HOME": home]), snapshots + "/aaa111")
    }

    func testFallsBackToTheNewestSnapshot() throws {
        let (home, snapshots) = try makeCache(revisions: ["ccc", "ddd", "bbb"], main: nil)
        XCTAssertEqual(try HFCache.snapshotDirectory(forModelID: "org/tiny", environment: ["HF_HOME": home]), snapshots + "/bbb")
        // refs/main naming a snapshot that is not there.
        let (stale, staleSnapshots) = try makeCache(revisions: ["ccc", "ddd"], main: "eee")
        XCTAssertEqual(try HFCache.snapshotDirectory(forModelID: "org/tiny", environment: ["HF_HOME": stale]), staleSnapshots + "/ddd")
    }

    func testHubCacheVariableWinsAndHomeIsTheDefault() throws {
        let (home, snapshots) = try makeCache(revisions: ["aaa"], main: "aaa")
        let environment = ["HF_HUB_CACHE": home + "/hub", "HF_HOME": "/nonexistent", "HOME": "/nonexistent"]
        XCTAssertEqual(try HFCache.snapshotDirectory(forModelID: "org/tiny", environment: environment), snapshots + "/aaa")
        let user = try makeTemporaryDirectory(self)
        try FileManager.default.createDirectory(atPath: user + "/.cache/huggingface", withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: home + "/hub", toPath: user + "/.cache/huggingface/hub")
        XCTAssertEqual(try HFCache.snapshotDirectory(forModelID: "org/tiny", environment: ["HOME": user]),
                       user + "/.cache/huggingface/hub/models--org--tiny/snapshots/aaa")
    }

    func testNotFoundListsWhereItLooked() throws {
        let (home, _) = try makeCache(revisions: ["aaa"], main: "aaa")
        let hub = home + "/hub"
        assertFormatError(.notFound, file: hub, item: "openai-community/gpt2",
                          try HFCache.snapshotDirectory(forModelID: "openai-community/gpt2", environment: ["HF_HOME": home]),
                          message: "looked at \(hub)/models--openai-community--gpt2/refs/main and \(hub)/models--openai-community--gpt2/snapshots")
        assertFormatError(.notFound, file: hub, item: "../etc", try HFCache.snapshotDirectory(forModelID: "../etc", environment: ["HF_HOME": home]))
    }
}
