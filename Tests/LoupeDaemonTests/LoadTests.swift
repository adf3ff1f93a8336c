import CZMQ
import Foundation
import LoupeWire
import Synchronization
import XCTest

/// Many clients at once against a `loupe serve` process: every reply reaches the client that
/// asked, carries its request's id and the same content as when asked alone; latency is
/// printed; memory does not grow with the number of traces served.
///
/// `LOUPE_LOAD_CLIENTS` and `LOUPE_LOAD_REQUESTS` scale the run (8 and 500 by default).
final class LoadTests: XCTestCase {
    static let clients = ProcessInfo.processInfo.environment["LOUPE_LOAD_CLIENTS"].flatMap(Int.init) ?? 8
    static let requestsPerClient = ProcessInfo.processInfo.environment["LOUPE_LOAD_REQUESTS"].flatMap(Int.init) ?? 500

    func testEightClientsOfMixedRequests() throws {
        let text = try Self.tinyModelWithTokenizer()
        defer { try? FileManager.default.removeItem(atPath: text) }
        let daemon = try DaemonProcess(["--preload", "gpt2=gpt2-tiny", "--preload", "llama=llama-tiny", "--preload", "text=" + text,
                                        "--model-root", Fixtures.modelsDirectory, "--model-root", text])
        defer { daemon.stop() }

        // What each request variant answers when asked alone.
        let requests = LoadRequests()
        let serial = try WireClient(endpoint: daemon.endpoint, timeout: 60)
        var expected = [String: [MessageValue]]()
        for op in LoadRequests.ops {
            expected[op] = try (0..<LoadRequests.variants).map { variant in
                try requests.content(op, of: serial.call(op, requests.fields(op, variant: variant)).body)
            }
            if op != "models.describe" {
                XCTAssertEqual(Set(expected[op]!.map { $0.jsonText() }).count, LoadRequests.variants, "\(op): variants must differ, or a crossed reply could pass")
            }
        }

        let latencies = Mutex<[String: [Double]]>([:])
        let failures = Mutex<[String]>([])
        let start = Date()
        let done = DispatchGroup()
        for client in 0..<Self.clients {
            done.enter()
            Thread { [expected, endpoint = daemon.endpoint] in
                defer { done.leave() }
                do {
                    let socket = try ZMQSocket(.dealer)
                    try socket.setOption(ZMQ_RCVTIMEO, Int32(60_000))
                    try socket.connect(endpoint)
                    var mine = [String: [Double]]()
                    for index in 0..<Self.requestsPerClient {
                        let op = LoadRequests.ops[(client + index) % LoadRequests.ops.count]
                        let variant = (client * 7 + index) % LoadRequests.variants
                        let id = "\(client)-\(index)"
                        var body = requests.fields(op, variant: variant)
                        body["id"] = .string(id)
                        body["op"] = .string(op)
                        body["mode"] = "stream"
                        let sent = Date()
                        try socket.send(WireMessage(.map(body)).frames)
                        // Every reply this socket gets until the final one must be this request's.
                        while true {
                            guard let frames = try socket.receive() else { throw DaemonProcess.Failure("\(id) \(op): no reply in 60 s (lost)") }
                            let reply = try WireMessage(frames: frames).body
                            guard reply["id"] == .string(id) else {
                                throw DaemonProcess.Failure("\(id) \(op): got the reply of \(reply["id"]?.jsonText() ?? "?") (crossed)")
                            }
                            let status = reply["status"]?.stringValue ?? ""
                            if status == "error" { throw DaemonProcess.Failure("\(id) \(op): \(reply["error"]?.jsonText() ?? "")") }
                            guard status == "ok" else { continue }
                            mine[op, default: []].append(Date().timeIntervalSince(sent))
                            let content = try requests.content(op, of: reply)
                            guard content == expected[op]![variant] else {
                                throw DaemonProcess.Failure("\(id) \(op) variant \(variant): content differs from the request's answer alone")
                            }
                            break
                        }
                    }
                    latencies.withLock { all in for (op, times) in mine { all[op, default: []] += times } }
                } catch {
                    failures.withLock { $0.append("client \(client): \(error)") }
                }
            }.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 600), .success, "the clients did not finish in 10 minutes")
        let seconds = Date().timeIntervalSince(start)
        XCTAssertEqual(failures.withLock { $0 }, [])

        let byOp = latencies.withLock { $0 }
        let all = byOp.values.flatMap { $0 }
        XCTAssertEqual(all.count, Self.clients * Self.requestsPerClient, "every request got its final reply")
        print(String(format: "load: %d clients x %d requests in %.1f s (%.0f requests/s); latency p50 %.1f ms, p99 %.1f ms",
                     Self.clients, Self.requestsPerClient, seconds, Double(all.count) / seconds,
                     Self.percentile(all, 0.5) * 1000, Self.percentile(all, 0.99) * 1000))
        for op in LoadRequests.ops {
            let times = byOp[op] ?? []
            print(String(format: "load:   %@ %5d requests, p50 %7.1f ms, p99 %7.1f ms", op.padding(toLength: 16, withPad: " ", startingAt: 0), times.count,
                         Self.percentile(times, 0.5) * 1000, Self.percentile(times, 0.99) * 1000))
        }
        XCTAssertEqual(try serial.call("server.stats").body["jobs"]?["running"], 0)
    }

    /// gpt2-tiny with the GPT-2 tokenizer (from scripts/fetch-models.sh) in a new directory:
    /// a model that answers `tokenize` and loads in no time. Its ids beyond the tiny
    /// vocabulary are never run.
    static func tinyModelWithTokenizer() throws -> String {
        let models = ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? (NSHomeDirectory() + "/.cache/loupe/models")
        let tokenizer = models + "/gpt2-tokenizer"
        guard FileManager.default.fileExists(atPath: tokenizer + "/encoder.json") else { throw Fixtures.MissingModel(path: tokenizer) }
        let directory = NSTemporaryDirectory() + "loupe-load-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: Fixtures.gpt2Tiny + "/" + file, toPath: directory + "/" + file)
        }
        for file in ["encoder.json", "vocab.bpe"] {
            try FileManager.default.copyItem(atPath: tokenizer + "/" + file, toPath: directory + "/" + file)
        }
        return directory
    }

    /// Resident memory after 2,000 traces is within 5% of its level after the first 100.
    func testTracesDoNotLeak() throws {
        let daemon = try DaemonProcess(["--preload", "gpt2=gpt2-tiny", "--preload", "llama=llama-tiny"])
        defer { daemon.stop() }
        let requests = LoadRequests()
        let endpoint = daemon.endpoint
        @Sendable func traces(_ range: Range<Int>) throws {
            let client = try WireClient(endpoint: endpoint, timeout: 60)
            for index in range {
                let reply = try client.call("trace", requests.fields("trace", variant: index % LoadRequests.variants, ["mode": "wait"])).body
                XCTAssertNotNil(reply["saved"]?["patched_logit_diff"])
            }
        }
        try traces(0..<100)
        let afterFirst = try daemon.residentBytes()
        // The other 1,900 from four clients at once, on both models.
        let failures = Mutex<[String]>([])
        let done = DispatchGroup()
        for part in 0..<4 {
            done.enter()
            Thread {
                defer { done.leave() }
                do { try traces((100 + part * 475)..<(100 + (part + 1) * 475)) } catch { failures.withLock { $0.append("\(error)") } }
            }.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 600), .success)
        XCTAssertEqual(failures.withLock { $0 }, [])
        let afterAll = try daemon.residentBytes()
        let growth = Double(afterAll - afterFirst) / Double(afterFirst)
        print(String(format: "memory: VmRSS %.1f MB after 100 traces, %.1f MB after 2000 (%+.2f%%)",
                     Double(afterFirst) / 1e6, Double(afterAll) / 1e6, growth * 100))
        XCTAssertLessThan(abs(growth), 0.05)
    }

    static func percentile(_ values: [Double], _ fraction: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * fraction).rounded()))]
    }
}

/// The mixed requests: each op in `variants` versions with different inputs (so that a
/// reply given to the wrong request shows), and the reply fields that must match.
struct LoadRequests {
    static let ops = ["models.describe", "tokenize", "forward", "trace", "sweep"]
    static let variants = 8

    func fields(_ op: String, variant: Int, _ extra: [String: MessageValue] = [:]) -> [String: MessageValue] {
        fields(op, variant: variant).merging(extra) { $1 }
    }

    func fields(_ op: String, variant: Int) -> [String: MessageValue] {
        let model: MessageValue = variant % 2 == 0 ? "gpt2" : "llama"
        let tokens = (0..<6).map { 1 + (variant * 37 + $0 * 11) % 500 }
        var corrupted = tokens
        corrupted[3] = 500 - variant
        switch op {
        case "models.describe": return ["name": model, "sites": false]
        case "tokenize": return ["model": "text", "text": .string("Variant \(variant): After John and Mary went to the store")]
        case "forward": return ["model": model, "tokens": [MessageValue(tokens)], "top_k": 3]
        case "sweep":
            return ["model": model, "clean": MessageValue(tokens), "corrupted": MessageValue(corrupted), "kind": "residual",
                    "metric": ["logit_diff": ["answer": 1, "wrong": 2]]]
        case "trace":
            // The tutorial's residual patch at one position (as Protocol/vectors' 32-trace-residual-patch),
            // through the canonical site names both architectures have.
            return ["model": model, "invokes": [MessageValue(tokens), ["tokens": MessageValue(corrupted)]], "nodes": [
                ["id": 0, "op": "get", "invoke": 0, "site": "blocks.0.resid_post", "io": "output"],
                ["id": 1, "op": "index", "x": ["ref": 0], "key": [":", 3, ":"]],
                ["id": 2, "op": "get", "invoke": 1, "site": "blocks.0.resid_post", "io": "output"],
                ["id": 3, "op": "setindex", "x": ["ref": 2], "key": [":", 3, ":"], "value": ["ref": 1]],
                ["id": 4, "op": "get", "invoke": 1, "site": "logits", "io": "output"],
                ["id": 5, "op": "index", "x": ["ref": 4], "key": [0, -1, 1]],
                ["id": 6, "op": "index", "x": ["ref": 4], "key": [0, -1, 2]],
                ["id": 7, "op": "sub", "x": ["ref": 5], "y": ["ref": 6]],
                ["id": 8, "op": "save", "name": "patched_logit_diff", "x": ["ref": 7]],
                ["id": 9, "op": "save", "name": "clean_resid", "x": ["ref": 1]],
            ]]
        default: fatalError("no load request for \(op)")
        }
    }

    /// The reply fields that depend only on the request (not on timing or job ids).
    func content(_ op: String, of reply: MessageValue) throws -> MessageValue {
        let keys: [String] = switch op {
        case "models.describe": ["name", "printed"]
        case "tokenize": ["tokens", "pieces"]
        case "forward": ["tokens", "top"]
        case "sweep": ["values", "clean", "corrupted", "clean_tokens", "corrupted_tokens"]
        default: ["saved", "names"]
        }
        let fields = try XCTUnwrap(reply.mapValue, "\(op): \(reply)")
        for key in keys where fields[key] == nil { throw DaemonProcess.Failure("\(op) reply without \(key): \(reply.jsonText())") }
        return .map(fields.filter { keys.contains($0.key) })
    }
}
