import CZMQ
import Foundation
import LoupeDaemon
import LoupeModels
import LoupeTestSupport
import LoupeWire
import XCTest

/// The catalogue of hostile requests (RELIABILITY.md, "Hostile input"): each one, sent as
/// raw frames to a live daemon with the tiny GPT-2 loaded, gets the typed error named here
/// (or, for NaN and Inf, a computed answer), after which the daemon still answers `hello`
/// and its resident memory stays within `memoryBound` of where it started.
final class HostileCatalogueTests: XCTestCase {
    struct Case {
        let name: String
        let frames: [[UInt8]]
        /// nil: the request is accepted and answered `ok`.
        let expect: ErrorCode?
        var check: ((MessageValue) -> String?)? = nil
    }

    /// Resident memory may grow this much over the whole catalogue (allocator slack for the
    /// largest messages decoded, the model's buffers once touched).
    static let memoryBound = 256 << 20

    func testEveryHostileRequestGetsATypedErrorAndTheDaemonKeepsServing() throws {
        let roots = NSTemporaryDirectory() + "loupe-roots-\(UUID().uuidString.prefix(8))"
        try makeRootWithLinks(roots)
        defer { try? FileManager.default.removeItem(atPath: roots) }
        // A daemon process of its own: the memory measured is the daemon's alone, not that of a
        // test process that has held other tests' models.
        let daemon = try DaemonProcess(["--model-root", Fixtures.modelsDirectory, "--model-root", roots])
        defer { daemon.stop() }
        let loaded = try WireClient(endpoint: daemon.endpoint, timeout: 60).call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        XCTAssertEqual(loaded.body["status"]?.stringValue, "ok", "\(loaded.body)")

        let socket = try ZMQSocket(.dealer)
        try socket.setOption(ZMQ_RCVTIMEO, Int32(60_000))
        try socket.setOption(ZMQ_LINGER, Int32(0))
        try socket.connect(daemon.endpoint)
        func exchange(_ frames: [[UInt8]]) throws -> MessageValue {
            try socket.send(frames)
            guard let reply = try socket.receive() else { throw Timeout() }
            return try MessageDecoder.decode(reply[0])
        }

        // Warm up what every request touches, then measure from there.
        _ = try exchange([MessageEncoder.encode(["op": "forward", "model": "tiny", "tokens": [[1, 2, 3]]])])
        let baseline = try rss(exchange)
        var peak = baseline
        let cases = catalogue(roots: roots)
        XCTAssertGreaterThanOrEqual(cases.count, 40)
        XCTAssertEqual(Set(cases.map(\.name)).count, cases.count, "case names are unique")

        // Twice: memory the first pass leaves the allocator holding must be reused by the second.
        var afterPass = [Int]()
        for _ in 1...2 {
        for entry in cases {
            let reply = try exchange(entry.frames)
            let status = reply["status"]?.stringValue
            if let code = entry.expect {
                XCTAssertEqual(status, "error", "\(entry.name): expected \(code.rawValue), got \(reply)")
                XCTAssertEqual(reply["error"]?["code"]?.stringValue, code.rawValue,
                               "\(entry.name): \(reply["error"]?["message"]?.stringValue ?? "\(reply)")")
                XCTAssertFalse(reply["error"]?["message"]?.stringValue?.isEmpty ?? true, "\(entry.name): the error says what is wrong")
            } else {
                XCTAssertEqual(status, "ok", "\(entry.name): \(reply)")
                if let problem = entry.check?(reply) { XCTFail("\(entry.name): \(problem)") }
            }
            let hello = try exchange([MessageEncoder.encode(["op": "hello", "id": 1])])
            XCTAssertEqual(hello["server"], "loupe", "\(entry.name): hello after it")
            let now = try rss(exchange)
            peak = max(peak, now)
            XCTAssertLessThan(now - baseline, Self.memoryBound, "\(entry.name): resident memory grew by \((now - baseline) >> 20) MiB")
        }
        afterPass.append(try rss(exchange))
        }
        XCTAssertLessThan(afterPass[1] - afterPass[0], 32 << 20, "the second pass grew resident memory from \(afterPass[0] >> 20) to \(afterPass[1] >> 20) MiB")
        print("hostile catalogue: \(cases.count) cases twice, resident memory \(baseline >> 20) MiB at the start, \(peak >> 20) MiB at most (growth \((peak - baseline) >> 20) MiB), \(afterPass[0] >> 20) MiB after the first pass, \(afterPass[1] >> 20) MiB after the second")
    }

    private struct Timeout: Error {}

    private func rss(_ exchange: ([[UInt8]]) throws -> MessageValue) throws -> Int {
        try exchange([MessageEncoder.encode(["op": "server.stats"])])["rss_bytes"]?.intValue ?? 0
    }

    /// A root holding a link to a file outside it, and a model directory whose weights link outside.
    private func makeRootWithLinks(_ root: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/linked-model", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: root + "/outside.gguf", withDestinationPath: Fixtures.repository + "/Package.swift")
        try fm.createSymbolicLink(atPath: root + "/outside-dir", withDestinationPath: Fixtures.repository + "/Sources")
        for file in ["config.json", "model.safetensors"] {
            let target = file == "config.json" ? Fixtures.gpt2Tiny + "/" + file : Fixtures.repository + "/Package.swift"
            try fm.createSymbolicLink(atPath: root + "/linked-model/" + file, withDestinationPath: target)
        }
    }

    // MARK: The catalogue

    private func catalogue(roots: String) -> [Case] {
        let hello = MessageEncoder.encode(["op": "hello", "id": 1])
        let forward: [String: MessageValue] = ["op": "forward", "model": "tiny", "tokens": [[1, 2, 3]]]
        func message(_ fields: [String: MessageValue]) -> [[UInt8]] { [MessageEncoder.encode(.map(fields))] }
        func with(_ base: [String: MessageValue], _ key: String, _ value: MessageValue) -> [[UInt8]] {
            var fields = base
            fields[key] = value
            return message(fields)
        }
        /// A map whose `key` holds raw bytes (a value no encoder would write).
        func raw(_ base: [String: MessageValue], _ key: String, _ bytes: [UInt8]) -> [[UInt8]] {
            var out: [UInt8] = [0x80 | UInt8(base.count + 1)]
            for (name, value) in base { out += MessageEncoder.encode(.string(name)) + MessageEncoder.encode(value) }
            return [out + MessageEncoder.encode(.string(key)) + bytes]
        }
        func f32(_ shape: [Int], _ values: [Float]) -> MessageValue {
            ["dtype": "f32", "shape": MessageValue(shape), "data": .binary(values.withUnsafeBytes { Array($0) })]
        }
        func trace(_ nodes: [MessageValue], invokes: [MessageValue] = [[1, 2, 3, 4]]) -> [[UInt8]] {
            message(["op": "trace", "model": "tiny", "invokes": .array(invokes), "nodes": .array(nodes)])
        }
        let get: MessageValue = ["id": 0, "op": "get", "site": "blocks.0.resid_post"]
        let sweep: [String: MessageValue] = ["op": "sweep", "model": "tiny", "clean": [1, 2, 3], "corrupted": [1, 5, 3],
                                             "metric": ["logit_diff": ["answer": 4, "wrong": 5]]]
        let load: [String: MessageValue] = ["op": "models.load", "name": "other"]

        // A million invocations of one token each: 2 MB, under the message limit.
        var million: [UInt8] = [0x84] + MessageEncoder.encode("op") + MessageEncoder.encode("trace")
        million += MessageEncoder.encode("model") + MessageEncoder.encode("tiny")
        million += MessageEncoder.encode("nodes") + [0x90] + MessageEncoder.encode("invokes")
        million += [0xdd, 0x00, 0x0f, 0x42, 0x40] + [UInt8](repeating: 0, count: 2_000_000).enumerated().map { $0.offset % 2 == 0 ? 0x91 : 0x01 }

        var cases = [Case]()
            // MessagePack itself.
            cases.append(Case(name: "truncated map", frames: [Array(hello.dropLast(3))], expect: .badRequest))
            cases.append(Case(name: "truncated inside a string header", frames: [[0x81, 0xd9]], expect: .badRequest))
            cases.append(Case(name: "trailing garbage", frames: [hello + [0x00, 0xff]], expect: .badRequest))
            cases.append(Case(name: "empty body frame", frames: [[]], expect: .badRequest))
            cases.append(Case(name: "body is an array", frames: [MessageEncoder.encode(["hello"])], expect: .badRequest))
            cases.append(Case(name: "body is a string", frames: [MessageEncoder.encode("hello")], expect: .badRequest))
            cases.append(Case(name: "maps nested 100,000 deep", frames: [[UInt8](repeating: 0, count: 100_000).flatMap { _ in [0x81, 0xa1, 0x61] } + [0xc0]], expect: .tooLarge))
            cases.append(Case(name: "arrays nested 100,000 deep", frames: raw(["op": "hello"], "x", [UInt8](repeating: 0x91, count: 100_000) + [0xc0]), expect: .tooLarge))
            cases.append(Case(name: "array declaring 4 G elements", frames: raw(["op": "hello"], "x", [0xdd, 0xff, 0xff, 0xff, 0xff]), expect: .badRequest))
            cases.append(Case(name: "map declaring 4 G entries", frames: raw(["op": "hello"], "x", [0xdf, 0xff, 0xff, 0xff, 0xff]), expect: .badRequest))
            cases.append(Case(name: "string declaring 4 GB", frames: raw(["op": "hello"], "x", [0xdb, 0xff, 0xff, 0xff, 0xff, 0x61]), expect: .tooLarge))
            cases.append(Case(name: "binary declaring 4 GB", frames: raw(["op": "hello"], "x", [0xc6, 0xff, 0xff, 0xff, 0xff, 0x00]), expect: .tooLarge))
            cases.append(Case(name: "extension declaring 4 GB", frames: raw(["op": "hello"], "x", [0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]), expect: .tooLarge))
            cases.append(Case(name: "the never-used byte 0xc1", frames: raw(["op": "hello"], "x", [0xc1]), expect: .badRequest))
            cases.append(Case(name: "integer map key", frames: [[0x82, 0xa2, 0x6f, 0x70, 0xa5] + Array("hello".utf8) + [0x01, 0x02]], expect: .badRequest))
            cases.append(Case(name: "duplicate map key", frames: [[0x82, 0xa2, 0x6f, 0x70, 0xa5] + Array("hello".utf8) + [0xa2, 0x6f, 0x70, 0xa5] + Array("hello".utf8)], expect: .badRequest))
            cases.append(Case(name: "invalid UTF-8 in a value", frames: raw(["id": 1], "op", [0xa2, 0xc3, 0x28]), expect: .badRequest))
            cases.append(Case(name: "invalid UTF-8 in a key", frames: [[0x82, 0xa2, 0x6f, 0x70, 0xa5] + Array("hello".utf8) + [0xa2, 0xff, 0xfe, 0x01]], expect: .badRequest))
            cases.append(Case(name: "extension value in a trace", frames: raw(["op": "trace", "model": "tiny", "invokes": [[1, 2]]], "nodes", [0x91, 0xd4, 0x01, 0x00]), expect: .badRequest))

            // Wrong types in the fields every request has, and in each op's own.
            cases.append(Case(name: "op is an integer", frames: message(["op": 7]), expect: .badRequest))
            cases.append(Case(name: "op is missing", frames: message(["id": 1]), expect: .badRequest))
            cases.append(Case(name: "id is a float", frames: message(["op": "hello", "id": 1.5]), expect: .badRequest))
            cases.append(Case(name: "id is an array", frames: message(["op": "hello", "id": [1, 2]]), expect: .badRequest))
            cases.append(Case(name: "id is a map", frames: message(["op": "hello", "id": ["n": 1]]), expect: .badRequest))
            cases.append(Case(name: "id is a boolean", frames: message(["op": "hello", "id": true]), expect: .badRequest))
            cases.append(Case(name: "frames is a string", frames: message(["op": "hello", "frames": "yes"]), expect: .badRequest))
            cases.append(Case(name: "unknown op", frames: message(["op": "models.format_disk"]), expect: .unknownOp))
            cases.append(Case(name: "protocol is a string", frames: message(["op": "hello", "protocol": "2"]), expect: .badRequest))
            cases.append(Case(name: "protocol from the future", frames: message(["op": "hello", "protocol": 99]), expect: .versionMismatch))
            cases.append(Case(name: "mode is an integer", frames: with(forward, "mode", 3), expect: .badRequest))
            cases.append(Case(name: "mode is unknown", frames: with(forward, "mode", "later"), expect: .badRequest))
            cases.append(Case(name: "model is an integer", frames: with(forward, "model", 1), expect: .badRequest))
            cases.append(Case(name: "model is unknown", frames: with(forward, "model", "ghost"), expect: .unknownModel))
            cases.append(Case(name: "tokens is a string", frames: with(forward, "tokens", "1 2 3"), expect: .badRequest))
            cases.append(Case(name: "a token is a float", frames: with(forward, "tokens", [[1, 2.5]]), expect: .badRequest))
            cases.append(Case(name: "a token row is empty", frames: with(forward, "tokens", [[]]), expect: .badRequest))
            cases.append(Case(name: "positions is a map", frames: with(forward, "positions", ["a": 1]), expect: .badRequest))
            cases.append(Case(name: "top_k is a boolean", frames: with(forward, "top_k", true), expect: .badRequest))
            cases.append(Case(name: "logits is a string", frames: with(forward, "logits", "yes"), expect: .badRequest))
            cases.append(Case(name: "save is a map", frames: with(forward, "save", ["site": "logits"]), expect: .badRequest))
            cases.append(Case(name: "prompts without a tokenizer", frames: message(["op": "forward", "model": "tiny", "prompts": ["hi"]]), expect: .badRequest))
            cases.append(Case(name: "sweep metric is an integer", frames: with(sweep, "metric", 3), expect: .badRequest))
            cases.append(Case(name: "sweep kind is unknown", frames: with(sweep, "kind", "neuron"), expect: .badRequest))
            cases.append(Case(name: "sweep kind is a nested array", frames: with(sweep, "kind", [["residual"]]), expect: .badRequest))
            cases.append(Case(name: "sweep method is a map", frames: with(sweep, "method", ["attribution": true]), expect: .badRequest))
            cases.append(Case(name: "sweep neuron_positions is an integer", frames: with(sweep, "neuron_positions", 1), expect: .badRequest))
            cases.append(Case(name: "models.load name with a slash", frames: message(["op": "models.load", "name": "a/b", "source": "gpt2-tiny"]), expect: .badRequest))
            cases.append(Case(name: "models.load keep_alive negative", frames: message(["op": "models.load", "name": "x", "source": "gpt2-tiny", "keep_alive": -1]), expect: .badRequest))
            cases.append(Case(name: "jobs.status job is a string", frames: message(["op": "jobs.status", "job": "1"]), expect: .badRequest))
            cases.append(Case(name: "jobs.result unknown job", frames: message(["op": "jobs.result", "job": .int(Int64.max)]), expect: .notFound))
            cases.append(Case(name: "integer above Int64", frames: raw(["op": "jobs.status"], "job", [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), expect: .badRequest))

            // Tensors and shapes.
            cases.append(Case(name: "negative shape", frames: with(forward, "tokens", ["dtype": "i32", "shape": [-1, 3], "data": .binary([])]), expect: .badRequest))
            cases.append(Case(name: "overflowing shape", frames: with(forward, "tokens", ["dtype": "i32", "shape": [.int(1 << 62), .int(1 << 62)], "data": .binary([])]), expect: .shapeMismatch))
            cases.append(Case(name: "tensor data shorter than its shape", frames: with(forward, "tokens", ["dtype": "i32", "shape": [1, 3], "data": .binary([1, 0, 0, 0])]), expect: .shapeMismatch))
            cases.append(Case(name: "tensor of rank 9", frames: with(forward, "tokens", ["dtype": "i32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "data": .binary([1, 0, 0, 0])]), expect: .badRequest))
            cases.append(Case(name: "unknown dtype", frames: with(forward, "tokens", ["dtype": "f16", "shape": [1, 1], "data": .binary([0, 0])]), expect: .badRequest))
            cases.append(Case(name: "tokens tensor of rank 1", frames: with(forward, "tokens", ["dtype": "i32", "shape": [2], "data": .binary([1, 0, 0, 0, 2, 0, 0, 0])]), expect: .shapeMismatch))
            cases.append(Case(name: "tensor data in a missing frame", frames: with(forward, "tokens", ["dtype": "i32", "shape": [1, 1], "data": ["frame": 5]]), expect: .badRequest))
            cases.append(Case(name: "a trace tensor shorter than its shape", frames: trace([["id": 0, "op": "constant", "value": ["dtype": "f32", "shape": [4], "data": .binary([0, 0, 0, 0])]]]), expect: .shapeMismatch))
            cases.append(Case(name: "a ragged nested-array literal", frames: trace([["id": 0, "op": "constant", "value": [[1, 2], [3]]]]), expect: .badRequest))

            // Against the model.
            cases.append(Case(name: "token id past the vocabulary", frames: with(forward, "tokens", [[1, 512]]), expect: .indexOutOfRange))
            cases.append(Case(name: "negative token id", frames: with(forward, "tokens", [[-1, 2]]), expect: .indexOutOfRange))
            cases.append(Case(name: "position out of range", frames: with(forward, "positions", [3]), expect: .indexOutOfRange))
            cases.append(Case(name: "position overflowing", frames: with(forward, "positions", [.int(Int64.min)]), expect: .indexOutOfRange))
            cases.append(Case(name: "top_k past the vocabulary", frames: with(forward, "top_k", 513), expect: .badRequest))
            cases.append(Case(name: "prompt longer than the context", frames: with(forward, "tokens", .array([MessageValue([Int](repeating: 1, count: 65))])), expect: .tooLarge))
            cases.append(Case(name: "a million token rows", frames: with(forward, "tokens", .array([MessageValue](repeating: [1], count: 1_000_000))), expect: .tooLarge))
            cases.append(Case(name: "unknown site to save", frames: with(forward, "save", ["transformer.h.9.output"]), expect: .unknownSite))
            cases.append(Case(name: "trace unknown op", frames: trace([["id": 0, "op": "system", "x": "rm -rf /"]]), expect: .unknownOp))
            cases.append(Case(name: "trace unknown site", frames: trace([["id": 0, "op": "get", "site": "blocks.7.resid_post"]]), expect: .unknownSite))
            cases.append(Case(name: "trace unknown intervention", frames: trace([["id": 0, "op": "intervene", "name": "exec", "invoke": 0, "params": [:]]]), expect: .unknownIntervention))
            cases.append(Case(name: "trace graph cycle", frames: trace([["id": 0, "op": "add", "x": ["ref": 1], "y": 1], ["id": 1, "op": "add", "x": ["ref": 0], "y": 1]]), expect: .badRequest))
            cases.append(Case(name: "trace self reference", frames: trace([["id": 0, "op": "neg", "x": ["ref": 0]]]), expect: .badRequest))
            cases.append(Case(name: "trace forward reference", frames: trace([["id": 0, "op": "save", "x": ["ref": 1], "name": "x"], get]), expect: .badRequest))
            cases.append(Case(name: "trace duplicate node id", frames: trace([get, get]), expect: .badRequest))
            cases.append(Case(name: "trace index out of range", frames: trace([get, ["id": 1, "op": "index", "x": ["ref": 0], "key": [0, 99]]]), expect: .indexOutOfRange))
            cases.append(Case(name: "trace invocation out of range", frames: trace([["id": 0, "op": "get", "site": "blocks.0.resid_post", "invoke": 5]]), expect: .indexOutOfRange))
            cases.append(Case(name: "trace head out of range", frames: trace([["id": 0, "op": "intervene", "name": "head_patch", "invoke": 1, "params": ["source": 0, "layer": 0, "head": 4]]], invokes: [[1, 2], [1, 3]]), expect: .indexOutOfRange))
            cases.append(Case(name: "trace write from a later site", frames: trace([["id": 0, "op": "get", "site": "blocks.1.resid_post"], ["id": 1, "op": "set", "site": "blocks.0.resid_post", "value": ["ref": 0]]]), expect: .outOfOrder))
            cases.append(Case(name: "trace prompt longer than the context", frames: trace([get], invokes: [MessageValue([Int](repeating: 1, count: 65))]), expect: .tooLarge))
            cases.append(Case(name: "a million invocations", frames: [million], expect: .tooLarge))
            cases.append(Case(name: "trace values without bound", frames: trace((0..<8).map { ["id": .int(Int64($0)), "op": "full", "shape": [.int(1 << 27)], "value": 1] }), expect: .tooLarge))

            // NaN and Inf are values like any other: computed as IEEE arithmetic says, as torch does.
            cases.append(Case(name: "NaN and Inf tensors", frames: trace([
                get,
                ["id": 1, "op": "set", "site": "blocks.0.resid_post", "value": f32([], [.nan])],
                ["id": 2, "op": "constant", "value": f32([2], [.infinity, -.infinity])],
                ["id": 3, "op": "get", "site": "logits"],
                ["id": 4, "op": "save", "x": ["ref": 3], "name": "logits"],
                ["id": 5, "op": "save", "x": ["ref": 2], "name": "inf"],
            ]), expect: nil, check: { reply in
                guard let logits = try? WireTensor(reply["saved"]?["logits"] ?? .null).floats(),
                      let inf = try? WireTensor(reply["saved"]?["inf"] ?? .null).floats() else { return "no saved tensors in \(reply)" }
                if !logits.allSatisfy(\.isNaN) { return "logits after a NaN residual are not all NaN" }
                return inf == [.infinity, -.infinity] ? nil : "Inf came back as \(inf)"
            }))

            // Model paths: only below the roots, after symlinks and `..`.
            cases.append(Case(name: "model path outside the roots", frames: with(load, "source", .string(Fixtures.repository + "/Package.swift")), expect: .badRequest))
            cases.append(Case(name: "model path escaping through ..", frames: with(load, "source", .string(Fixtures.modelsDirectory + "/../../Package.swift")), expect: .badRequest))
            cases.append(Case(name: "missing model path escaping through ..", frames: with(load, "source", .string(Fixtures.modelsDirectory + "/../../no-such-model.gguf")), expect: .badRequest))
            cases.append(Case(name: "relative model path escaping through ..", frames: with(load, "source", "../../../../../../../../etc/passwd"), expect: .badRequest))
            cases.append(Case(name: "symlink to a file outside the roots", frames: with(load, "source", .string(roots + "/outside.gguf")), expect: .badRequest))
            cases.append(Case(name: "symlink to a directory outside the roots", frames: with(load, "source", .string(roots + "/outside-dir")), expect: .badRequest))
            cases.append(Case(name: "model directory whose weights link outside", frames: with(load, "source", .string(roots + "/linked-model")), expect: .badRequest))
        return cases
    }
}

/// Each configurable limit (RELIABILITY.md, "Limits"): under it a request is served, over it
/// the request gets `too_large` (or `busy`), and `hello` reports the limit.
final class LimitTests: XCTestCase {
    private func start(_ adjust: @escaping (inout DaemonConfiguration) -> Void) throws -> LiveDaemon {
        let live = try LiveDaemon(adjust)
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        return live
    }

    func testMessageSize() throws {
        let live = try start { $0.limits.maxBytes = 64 << 10 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_message_bytes"], 65_536)
        XCTAssertEqual(try live.call("hello", ["padding": .string(String(repeating: "x", count: 60 << 10))])["server"], "loupe")
        // Over the limit the body is not decoded, so the error reply's id is nil: a raw socket sees it.
        let socket = try ZMQSocket(.dealer)
        try socket.setOption(ZMQ_RCVTIMEO, Int32(30_000))
        try socket.setOption(ZMQ_LINGER, Int32(0))
        try socket.connect(live.endpoint)
        try socket.send([MessageEncoder.encode(["id": 1, "op": "hello", "padding": .string(String(repeating: "x", count: 70 << 10))])])
        let reply = try MessageDecoder.decode(try XCTUnwrap(socket.receive()).first ?? [])
        XCTAssertEqual(reply["error"]?["code"], "too_large")
        XCTAssertTrue(reply["error"]?["message"]?.stringValue?.contains("65536") ?? false, "\(reply)")
        // A reply over the limit is refused the same way: full logits of 200 rows are 400 KiB.
        try live.expectError(.tooLarge, "forward", ["model": "tiny", "tokens": .array(Array(repeating: [1, 2], count: 200)), "logits": true])
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
    }

    func testTokensPerBatch() throws {
        let live = try start { $0.maxBatchTokens = 16 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_batch_tokens"], 16)
        let rows = { (count: Int, length: Int) -> MessageValue in .array(Array(repeating: MessageValue(Array(1...length)), count: count)) }
        XCTAssertNotNil(try live.call("forward", ["model": "tiny", "tokens": rows(2, 8)])["top"])
        try live.expectError(.tooLarge, "forward", ["model": "tiny", "tokens": rows(3, 6)])
        let get: MessageValue = ["id": 0, "op": "get", "site": "logits", "invoke": 0]
        XCTAssertNotNil(try live.call("trace", ["model": "tiny", "invokes": rows(4, 4), "nodes": [get, ["id": 1, "op": "save", "x": ["ref": 0], "name": "l"]]])["saved"])
        try live.expectError(.tooLarge, "trace", ["model": "tiny", "invokes": rows(5, 4), "nodes": [get]])
        try live.expectError(.tooLarge, "trace", ["model": "tiny", "invokes": rows(17, 1), "nodes": [get]])
    }

    func testSavedBytesPerTrace() throws {
        // blocks.0.resid_post of a 4-token invocation: [1, 4, 64] float32, 1 KiB.
        let live = try start { $0.maxSavedBytes = 1024 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_saved_bytes"], 1024)
        let nodes: [MessageValue] = [["id": 0, "op": "get", "site": "blocks.0.resid_post"], ["id": 1, "op": "save", "x": ["ref": 0], "name": "a"]]
        let saved = try live.call("trace", ["model": "tiny", "invokes": [[1, 2, 3, 4]], "nodes": .array(nodes)])["saved"]?["a"]
        XCTAssertEqual(saved?["shape"], [1, 4, 64])
        let error = try live.expectError(.tooLarge, "trace", ["model": "tiny", "invokes": [[1, 2, 3, 4]], "nodes": .array(nodes + [
            ["id": 2, "op": "get", "site": "blocks.1.resid_post"], ["id": 3, "op": "save", "x": ["ref": 2], "name": "b"]])])
        XCTAssertEqual(error.field, "nodes")
    }

    func testBackwardBytesPerTrace() throws {
        // The bound for 6 tokens of the tiny GPT-2 is about 120 KiB; 4 invocations of 32 about 2 MiB.
        let live = try start { $0.maxBackwardBytes = 512 << 10 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_backward_bytes"], 524_288)
        let nodes: [MessageValue] = [
            ["id": 0, "op": "get", "site": "blocks.0.resid_post", "invoke": 0],
            ["id": 1, "op": "get", "site": "logits", "invoke": 0],
            ["id": 2, "op": "index", "x": ["ref": 1], "key": [0, -1, 5]],
            ["id": 3, "op": "backward", "x": ["ref": 2]],
            ["id": 4, "op": "grad", "x": ["ref": 0]],
            ["id": 5, "op": "save", "x": ["ref": 4], "name": "g"],
        ]
        let reply = try live.call("trace", ["model": "tiny", "invokes": [[1, 2, 3, 4, 5, 6]], "nodes": .array(nodes)])
        XCTAssertEqual(reply["saved"]?["g"]?["shape"], [1, 6, 64])
        let backward = try XCTUnwrap(reply["backward"])
        XCTAssertGreaterThan(backward["peak_bytes"]?.intValue ?? 0, 0)
        XCTAssertGreaterThan(backward["saved_bytes"]?.intValue ?? 0, 0)
        XCTAssertGreaterThan(backward["records"]?.intValue ?? 0, 0)
        XCTAssertGreaterThanOrEqual(backward["bound_bytes"]?.intValue ?? 0, backward["peak_bytes"]?.intValue ?? .max)
        let long = MessageValue(Array(1...32))
        let error = try live.expectError(.tooLarge, "trace", ["model": "tiny", "invokes": [long, long, long, long], "nodes": .array(nodes)])
        XCTAssertEqual(error.field, "nodes.3")
        XCTAssertEqual(error.node, 3)
        XCTAssertTrue(error.message.contains("--max-backward-mb"), error.message)
    }

    /// A trace whose work at layer 0 takes seconds (matrix products of 1536 x 1536 computed
    /// from the residual stream), so the pass is still at layer 0 when a limit looks at it.
    private func slowTrace(products: Int) -> [String: MessageValue] {
        var nodes: [MessageValue] = [
            ["id": 0, "op": "get", "site": "blocks.0.resid_post"],
            ["id": 1, "op": "sum", "x": ["ref": 0]],
            ["id": 2, "op": "full", "shape": [1536, 1536], "value": 0.001],
            ["id": 3, "op": "mul", "x": ["ref": 2], "y": ["ref": 1]],
        ]
        for step in 0..<products {
            nodes.append(["id": .int(Int64(4 + step)), "op": "matmul", "x": ["ref": .int(Int64(3 + step))], "y": ["ref": 2]])
        }
        nodes.append(["id": 100, "op": "sum", "x": ["ref": .int(Int64(3 + products))]])
        nodes.append(["id": 101, "op": "save", "x": ["ref": 100], "name": "s"])
        return ["model": "tiny", "invokes": [[1, 2, 3]], "nodes": .array(nodes)]
    }

    func testRunTimePerJob() throws {
        let live = try start { $0.maxJobSeconds = 0.2 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_job_seconds"], 0.2)
        let started = Date()
        let error = try live.expectError(.tooLarge, "trace", slowTrace(products: 8))
        XCTAssertTrue(error.message.contains("0.2 s"), error.message)
        print("run-time limit: stopped after \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
        // A quick job under the limit runs as ever.
        XCTAssertNotNil(try live.call("forward", ["model": "tiny", "tokens": [[1, 2, 3]]])["top"])
    }

    func testQueuedJobsPerClient() throws {
        let live = try start { $0.maxClientJobs = 2 }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["limits"]?["max_client_jobs"], 2)
        let client = try live.client()
        var slow = slowTrace(products: 4)
        slow["mode"] = "detach"
        let first = try XCTUnwrap(client.call("trace", slow).body["job"]?.intValue)
        let second = try XCTUnwrap(client.call("trace", slow).body["job"]?.intValue)
        do {
            _ = try client.call("trace", slow)
            XCTFail("a third job from the same client was accepted")
        } catch ClientError.daemon(let error) {
            XCTAssertEqual(error.code, .busy, error.message)
            XCTAssertTrue(error.message.contains("--max-client-jobs"), error.message)
        }
        // Another client is not held back by the first one's jobs.
        let third = try XCTUnwrap(live.client().call("trace", slow).body["job"]?.intValue)
        for job in [first, second, third] { _ = try? client.call("jobs.cancel", ["job": MessageValue(job)]) }
        for job in [first, second, third] { _ = try? client.call("jobs.result", ["job": MessageValue(job)]) }
        // Once they have ended the client may queue again.
        XCTAssertNotNil(try client.call("forward", ["model": "tiny", "tokens": [[1, 2, 3]]]).body["top"])
    }
}

/// The fuzz target's path (`RequestCheck`) answers as the daemon does: every forward, sweep
/// and trace request of the protocol vectors gets the vector's status and error code.
final class RequestCheckTests: XCTestCase {
    func testTheFuzzTargetAnswersTheVectorsAsTheDaemon() throws {
        let model = try LoadedModel.load(Fixtures.gpt2Tiny, registry: Fixtures.registry())
        var configuration = DaemonConfiguration()
        configuration.modelsDirectory = Fixtures.modelsDirectory
        configuration.modelRoots = [Fixtures.modelsDirectory]
        let check = try RequestCheck(name: "tiny", model: model, configuration: configuration, interventions: Fixtures.interventions())
        let vectors = Fixtures.repository + "/Protocol/vectors"
        var compared = 0
        for file in try FileManager.default.contentsOfDirectory(atPath: vectors).sorted() where file.hasSuffix(".request.msgpack") {
            let request = try XCTUnwrap(FileManager.default.contents(atPath: vectors + "/" + file))
            let reply = try MessageDecoder.decode(Array(try XCTUnwrap(FileManager.default.contents(
                atPath: vectors + "/" + file.replacingOccurrences(of: ".request.", with: ".reply.")))))
            guard let op = try MessageDecoder.decode(Array(request))["op"]?.stringValue, ["forward", "sweep", "trace"].contains(op) else { continue }
            switch check.check([Array(request)], run: true) {
            case .success:
                XCTAssertEqual(reply["status"], "ok", "\(file): RequestCheck accepts what the daemon refuses: \(reply)")
            case .failure(let error):
                XCTAssertEqual(reply["error"]?["code"]?.stringValue, error.code.rawValue, "\(file): \(error.message)")
            }
            compared += 1
        }
        XCTAssertGreaterThanOrEqual(compared, 30)
    }
}

/// `--model-root`: what lies below the roots loads, links included when they stay inside.
final class ModelRootTests: XCTestCase {
    func testLinksThatStayInsideTheRootsLoadAndOthersAreRefused() throws {
        let root = NSTemporaryDirectory() + "loupe-root-\(UUID().uuidString.prefix(8))"
        let fm = FileManager.default
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: root) }
        // A link in one root to a model in another root: allowed, and the same weights as the model itself.
        try fm.createSymbolicLink(atPath: root + "/tiny-link", withDestinationPath: Fixtures.gpt2Tiny)
        let live = try LiveDaemon { $0.modelRoots = [root, Fixtures.modelsDirectory] }
        defer { live.stop() }
        let linked = try live.call("models.load", ["name": "linked", "source": .string(root + "/tiny-link")])
        XCTAssertEqual(linked["path"]?.stringValue, try XCTUnwrap(URL(fileURLWithPath: Fixtures.gpt2Tiny).resolvingSymlinksInPath().path))
        XCTAssertEqual(try live.call("models.load", ["name": "direct", "source": .string(Fixtures.gpt2Tiny)])["shared"], true)
        // The models directory is not a root unless named: llama-tiny is refused when only root is.
        let onlyTemp = try LiveDaemon { $0.modelRoots = [root] }
        defer { onlyTemp.stop() }
        let refused = try onlyTemp.expectError(.badRequest, "models.load", ["name": "llama", "source": "llama-tiny"])
        XCTAssertEqual(refused.field, "source")
        XCTAssertTrue(refused.message.contains("outside the model roots"), refused.message)
        try onlyTemp.expectError(.badRequest, "models.load", ["name": "linked", "source": .string(root + "/tiny-link")])
    }
}
